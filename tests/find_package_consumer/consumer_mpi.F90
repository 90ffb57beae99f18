!> ESM-side program of a domain-decomposed model against the installed package: it only
!! needs to compile and link against PrecipDiff::precipdiff_mpi, found with
!! find_package(PrecipDiff COMPONENTS mpi) (it is built, not run: running needs mpiexec).
program consumer_mpi
  use precipdiff, only: PD_NO_HANDLE, PD_ERRMSG_LEN
  use precipdiff_mpi, only: precipdiff_mpi_finalize
  implicit none
  integer :: h = PD_NO_HANDLE, errflg
  character(len=PD_ERRMSG_LEN) :: errmsg
  call precipdiff_mpi_finalize(h, errmsg, errflg)
  write (*, '(a,i0)') 'precipdiff_mpi_finalize on PD_NO_HANDLE: errflg = ', errflg
end program consumer_mpi

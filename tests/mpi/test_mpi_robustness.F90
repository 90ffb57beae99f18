!> MPI layer: errors never kill the host or orphan an instance (issue #11, items 2 and 4).
!! Run on 2 ranks with the fake plugin (each rank owns half of the longitudes).
!!
!! * errmsg buffers of any length, 1 included, receive a truncated message on every rank:
!!   blocks that overlap, a block of the wrong shape with a long field name, a second init;
!! * a second precipdiff_mpi_init on a live handle is refused and the live instance stays
!!   usable under the same handle (as in the serial module).
!! Argument 1: tests/fortran (fake namelists).
program test_mpi_robustness
  use mpi_f08
  use precipdiff, only: PD_NO_HANDLE, PD_ERRMSG_LEN, PD_ERR_INVALID_ARGUMENT
  use precipdiff_mpi
  use pd_test_utils
  implicit none
  integer, parameter :: gnx = 8, gny = 4
  type(MPI_Comm) :: comm
  integer :: rank, nranks, ierr, h, h2, errflg, i, s(2), c(2), nl, nt, nlf, ntf
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=128) :: mid
  character(len=1) :: tiny
  character(len=512) :: fdir, nml
  character(len=600) :: long_name
  real(8) :: glon(gnx), glat(gny)
  real(8), allocatable :: q(:, :), wrong(:, :)

  call MPI_Init(ierr)
  call MPI_Comm_dup(MPI_COMM_WORLD, comm, ierr)
  call MPI_Comm_rank(comm, rank, ierr)
  call MPI_Comm_size(comm, nranks, ierr)
  call get_command_argument(1, fdir)
  nml = trim(fdir)//'/fake.nml'
  glon = [(45.0d0*(i - 1), i = 1, gnx)]
  glat = [-60.0d0, -20.0d0, 20.0d0, 60.0d0]
  ! Rank r owns longitudes [r*gnx/n + 1, (r+1)*gnx/n].
  c = [gnx/nranks, gny]
  s = [rank*c(1) + 1, 1]
  allocate (q(c(1), c(2)), wrong(c(1) + 1, c(2)))
  q = 1.0d-3

  ! Overlapping blocks: every rank claims the first block. Long message, short buffers.
  h2 = PD_NO_HANDLE
  call precipdiff_mpi_init(h2, trim(nml), glon(1:c(1)), glat, [1, 1], [gnx, gny], comm, mid, &
       errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. index(mid, 'precipdiff_mpi_init: the blocks') &
       == 1 .and. h2 == PD_NO_HANDLE, 'overlapping blocks with errmsg len=128: an error, no crash')
  call precipdiff_mpi_init(h2, trim(nml), glon(1:c(1)), glat, [1, 1], [gnx, gny], comm, tiny, &
       errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. tiny == 'p', &
       'overlapping blocks with errmsg len=1')

  ! A good instance.
  h = PD_NO_HANDLE
  call precipdiff_mpi_init(h, trim(nml), glon(s(1):s(1) + c(1) - 1), glat, s, [gnx, gny], comm, &
       errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init')

  ! Wrong block shape with a field name longer than any errmsg buffer.
  long_name = repeat('x', len(long_name))
  call precipdiff_mpi_set_field(h, long_name, wrong, errmsg, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. index(errmsg, 'xxxx') > 0, &
       'wrong block shape with a 600-character name at PD_ERRMSG_LEN')
  call precipdiff_mpi_set_field(h, long_name, wrong, tiny, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT, 'wrong block shape, errmsg len=1')

  ! Second init on the live handle: refused, and the instance lives on under h.
  h2 = h
  call precipdiff_mpi_init(h, trim(nml), glon(s(1):s(1) + c(1) - 1), glat, s, [gnx, gny], comm, &
       mid, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. index(mid, 'already initialised') > 0, &
       'second init on a live handle is refused')
  call check(h == h2, 'second init keeps the live handle')
  call precipdiff_mpi_init(h, trim(nml), glon(s(1):s(1) + c(1) - 1), glat, s, [gnx, gny], comm, &
       tiny, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. h == h2, 'second init, errmsg len=1')
  call precipdiff_mpi_shapes(h, nl, nt, nlf, ntf, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'the live instance still answers')
  call precipdiff_mpi_set_field(h, 'psl', q, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'the live instance still takes fields')

  call precipdiff_mpi_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize')
  call check(h == PD_NO_HANDLE, 'finalize resets the handle')
  call MPI_Comm_free(comm, ierr)
  if (nfail > 0) write (*, '(a,i0)') 'failures on rank ', rank
  call finish()
  call MPI_Finalize(ierr)
end program test_mpi_robustness

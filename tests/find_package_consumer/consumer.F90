!> Minimal ESM-side program against the installed package: one window through the
!! fake plugin, checks the result, finalizes.
program consumer
  use precipdiff
  implicit none
  integer :: h = PD_NO_HANDLE, errflg, i, major, minor, patch
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: nml
  real(8) :: lon(6), lat(3), pr_fine(24, 12), pr_model(6, 3)
  real(4) :: q(6, 3), psl(6, 3)
  logical :: ready

  call get_command_argument(1, nml)
  call precipdiff_version(major, minor, patch)
  write (*, '(a,i0,a,i0,a,i0)') 'precipdiff ', major, '.', minor, '.', patch
  lon = [(30.0d0*i, i = 0, 5)]
  lat = [-45.0d0, 0.0d0, 45.0d0]
  q = 0.5
  psl = 2.0
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  if (errflg /= 0) error stop 'init failed'
  call precipdiff_set_field(h, 'hus850', q, errmsg, errflg)
  call precipdiff_set_field(h, 'psl', psl, errmsg, errflg)
  call precipdiff_run(h, 7200.0d0, 7200.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  if (errflg /= 0 .or. .not. ready) then
    write (*, '(a)') trim(errmsg)
    error stop 'run failed'
  end if
  if (any(abs(pr_fine - 2.5d0) > 0d0)) error stop 'wrong result'
  call precipdiff_finalize(h, errmsg, errflg)
  if (errflg /= 0) error stop 'finalize failed'
  write (*, '(a)') 'consumer ok'
end program consumer

!> The embedded interpreter cannot start or cannot import precipdiff: every call
!! reports PD_ERR_PYTHON_INIT with the reason (argument 2 must appear in it), never
!! PD_OK, and the host can finalize and exit cleanly. Argument 1: a namelist.
program test_python_init_error
  use precipdiff
  use pd_test_utils
  implicit none
  integer :: h = PD_NO_HANDLE, errflg
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=256) :: nml
  character(len=64) :: needle
  real(8) :: lon(4) = [0d0, 90d0, 180d0, 270d0], lat(2) = [-45d0, 45d0], f(4, 2) = 1d0
  logical :: ready

  call get_command_argument(1, nml)
  call get_command_argument(2, needle)
  call precipdiff_ready(errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_PYTHON_INIT, [needle], 'ready reports the failure')
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_PYTHON_INIT, [needle], 'init reports the failure')
  call check(h == PD_NO_HANDLE, 'no handle')
  ! A made-up handle must not read as success either (cffi would return 0).
  call precipdiff_set_field(7, 'psl', f, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_PYTHON_INIT, [needle], 'later calls fail too')
  call precipdiff_step(7, 1d0, 1d0, ready, errmsg, errflg)
  call check(errflg == PD_ERR_PYTHON_INIT .and. .not. ready, 'step fails, not ready')
  call precipdiff_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize of PD_NO_HANDLE is clean')
  call finish()
end program test_python_init_error

!> A plugin that calls sys.exit(): the host must get an error, not be terminated,
!! and must still be able to finalize.
program test_no_exit
  use precipdiff
  use pd_test_utils
  implicit none
  integer :: h = PD_NO_HANDLE, errflg, i
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=256) :: nml
  real(8) :: lon(6), lat(3), f(6, 3), pr_fine(24, 12), pr_model(6, 3)
  logical :: ready

  call get_command_argument(1, nml)
  lon = [(30.0d0*i, i = 0, 5)]
  lat = [-45.0d0, 0.0d0, 45.0d0]
  f = 1.0d0
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init')
  call precipdiff_run(h, 7200.0d0, 7200.0d0, ['hus850', 'psl   '], &
       reshape([f, f], [6, 3, 2]), pr_fine, pr_model, ready, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_PYTHON, [character(len=40) :: 'SystemExit', '3'], &
       'sys.exit in Python becomes an error')
  call precipdiff_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize')
  call finish()
end program test_no_exit

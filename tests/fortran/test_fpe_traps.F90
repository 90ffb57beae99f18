!> Built with -ffpe-trap=invalid,zero,overflow like many ESMs: starting Python,
!! importing numpy and running must not raise SIGFPE, and the host's traps must be
!! enabled again after every call.
program test_fpe_traps
  use, intrinsic :: iso_c_binding, only: c_int
  use precipdiff
  use pd_test_utils
  implicit none
  interface
    integer(c_int) function fegetexcept() bind(c, name="fegetexcept")
      import :: c_int
    end function fegetexcept
  end interface
  integer :: h = PD_NO_HANDLE, errflg, i, traps_before
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=256) :: nml
  real(8) :: lon(6), lat(3), q(6, 3), psl(6, 3), pr_fine(24, 12), pr_model(6, 3)
  logical :: ready

  call get_command_argument(1, nml)
  lon = [(30.0d0*i, i = 0, 5)]
  lat = [-45.0d0, 0.0d0, 45.0d0]
  q = 1.0d-3
  psl = 1.0d5
  traps_before = int(fegetexcept())
  call check(traps_before /= 0, 'traps are enabled in this test program')
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init with traps enabled')
  call check(int(fegetexcept()) == traps_before, 'traps restored after init')
  call precipdiff_set_field(h, 'hus850', q, errmsg, errflg)
  call precipdiff_set_field(h, 'psl', psl, errmsg, errflg)
  call precipdiff_run(h, 7200.0d0, 7200.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'run with traps enabled')
  call check(ready .and. all(pr_model == q + psl), 'result correct')
  call check(int(fegetexcept()) == traps_before, 'traps restored after run')
  call precipdiff_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize')
  call finish()
end program test_fpe_traps

!> Bad input at the boundary: every misuse returns errflg /= 0 with a message that
!! names the problem; the host continues, a correct call still works, and it can
!! finalize cleanly. Argument 1: the directory holding the test namelists.
program test_errors
  use precipdiff
  use pd_test_utils
  implicit none
  integer, parameter :: nlon = 6, nlat = 3
  integer :: h = PD_NO_HANDLE, h0 = PD_NO_HANDLE, hbad, errflg, i, nl, nt, nlf, ntf
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=256) :: dir, nml
  real(8) :: lon(nlon), lat(nlat), q(nlon, nlat), psl(nlon, nlat), wrong(nlon + 1, nlat)
  real(8), allocatable :: pr_fine(:, :), pr_model(:, :)
  real(8) :: small_fine(2, 2)
  real(8) :: nan, inf, zero
  logical :: ready

  call get_command_argument(1, dir)
  nml = trim(dir)//'/fake.nml'
  lon = [(30.0d0*i, i = 0, nlon - 1)]
  lat = [-45.0d0, 0.0d0, 45.0d0]
  q = 1.0d-3
  psl = 1.0d5
  allocate (pr_fine(nlon*4, nlat*4), pr_model(nlon, nlat))

  ! Run before init (handle never initialised): no Python needed to answer.
  call precipdiff_run(h0, 3600.0d0, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_NOT_INITIALISED, [character(len=40) :: 'precipdiff_init'], &
       'run before init')
  call check(.not. ready, 'ready is false on error')
  call precipdiff_set_field(h0, 'psl', psl, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_NOT_INITIALISED, [character(len=40) :: 'PD_NO_HANDLE'], &
       'set_field before init')

  ! Missing namelist: the message names the file.
  call precipdiff_init(h, trim(dir)//'/no_such.nml', lon, lat, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_CONFIG, [character(len=40) :: 'no_such.nml'], 'missing namelist')
  call check(h == PD_NO_HANDLE, 'failed init leaves PD_NO_HANDLE')

  ! Bundle and device failures raised by the plugin map to their codes.
  call precipdiff_init(h, trim(dir)//'/fake_bundle_error.nml', lon, lat, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_BUNDLE, [character(len=40) :: 'BundleError'], 'bundle error at init')
  call precipdiff_init(h, trim(dir)//'/fake_device_error.nml', lon, lat, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_DEVICE, [character(len=40) :: 'DeviceError'], 'device error at init')

  ! Subdomains are refused until the MPI layer lands (the message says so).
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg, start=[4, 1], &
       global_shape=[2*nlon, nlat])
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: 'domain decomposition'], &
       'subdomain arguments')

  ! A good init, then double init of the live handle.
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init')
  hbad = h
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_ALREADY_INITIALISED, [character(len=40) :: 'already initialised'], &
       'double init')
  call check(h == hbad, 'double init keeps the live handle')

  ! Unknown handle.
  hbad = h + 1000
  call precipdiff_step(hbad, 3600.0d0, 3600.0d0, ready, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_BAD_HANDLE, [character(len=40) :: 'unknown handle'], 'unknown handle')
  call precipdiff_shapes(hbad, nl, nt, nlf, ntf, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_BAD_HANDLE, [character(len=40) :: 'unknown handle'], &
       'unknown handle (query)')

  ! Wrong array shapes, in and out.
  call precipdiff_set_field(h, 'psl', wrong, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: 'psl   ', 'nlon=7', 'nlon=6'], &
       'wrong field shape')
  call precipdiff_run(h, 3600.0d0, 3600.0d0, ['psl', 'q  '], reshape(psl, [nlon, nlat, 1]), &
       pr_fine, pr_model, ready, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: '2 names', '1 fields'], &
       'names and fields disagree')

  ! Non-finite values: NaN and Inf, located in Fortran indices.
  zero = 0.0d0
  call nan_inf(nan, inf)
  q(2, 3) = nan
  call precipdiff_set_field(h, 'hus850', q, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'hus850', 'non-finite', '(2, 3)'], &
       'NaN in a field')
  q(2, 3) = 1.0d-3
  psl(6, 1) = inf
  call precipdiff_set_field(h, 'psl', psl, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'psl', 'non-finite', '(6, 1)'], &
       'Inf in a field')
  psl(6, 1) = 1.0d5
  call precipdiff_set_field(h, 'pr', psl, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'pr'], 'unknown field name')

  ! Output before any window closed; then wrong output shape.
  call precipdiff_get_output(h, pr_fine, pr_model, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'no output yet'], 'output before ready')

  ! The host continues: a correct window still works.
  call precipdiff_set_field(h, 'hus850', q, errmsg, errflg)
  call precipdiff_set_field(h, 'psl', psl, errmsg, errflg)
  call precipdiff_run(h, 7200.0d0, 7200.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'a correct run after errors')
  call check(ready .and. all(pr_model == q + psl), 'correct output after errors')
  call precipdiff_get_output(h, small_fine, pr_model, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: 'pr_fine', 'nlon=2', 'nlon=24'], &
       'wrong output shape')
  call precipdiff_step(h, 9000.0d0, zero, ready, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: 'dt=0'], 'dt = 0')
  call precipdiff_read_restart(h, trim(dir)//'/no_such.restart', errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_CONFIG, [character(len=40) :: 'no_such.restart'], 'missing restart file')

  call precipdiff_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize after errors')
  call precipdiff_step(hbad - 1000, 3600.0d0, 3600.0d0, ready, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_BAD_HANDLE, [character(len=40) :: 'already finalized'], &
       'use after finalize')
  call finish()

contains

  !> NaN and +Inf without tripping compile-time checks.
  subroutine nan_inf(n, i)
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan, ieee_positive_inf
    real(8), intent(out) :: n !! quiet NaN
    real(8), intent(out) :: i !! +Inf
    n = ieee_value(n, ieee_quiet_nan)
    i = ieee_value(i, ieee_positive_inf)
  end subroutine nan_inf
end program test_errors

!> Life cycle of the bridge through the fake plugin (exact arithmetic):
!! init, queries, set_field r4/r8/3-D, run in both forms, restarts, two handles,
!! idempotent finalize.
program test_lifecycle
  use precipdiff
  use pd_test_utils
  implicit none
  integer, parameter :: nlon = 6, nlat = 3, r = 4
  integer :: h1 = PD_NO_HANDLE, h2 = PD_NO_HANDLE, errflg, i, j, k, nl, nt, nlf, ntf, nn
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=16) :: names(4)
  character(len=256) :: nml, restart
  real(8) :: lon(nlon), lat(nlat), q(nlon, nlat), psl(nlon, nlat), expect(nlon, nlat)
  real(4) :: q4(nlon, nlat), stack4(nlon, nlat, 2)
  real(8) :: hus3(nlon, nlat, 3), p3(nlon, nlat, 3), plev(3)
  real(8) :: pr_fine(nlon*r, nlat*r), pr_model(nlon, nlat), lonf(nlon*r), latf(nlat*r)
  logical :: ready

  call get_command_argument(1, nml)
  restart = 'test_lifecycle.restart'
  lon = [(30.0d0*i, i = 0, nlon - 1)]
  lat = [-45.0d0, 0.0d0, 45.0d0]
  ! Values that depend on (i, j) so any transpose or offset shows.
  do j = 1, nlat
    do i = 1, nlon
      q(i, j) = 1.0d-3*i + 1.0d-4*j
      psl(i, j) = 100000.0d0 + 10.0d0*i + 1000.0d0*j
    end do
  end do

  call precipdiff_init(h1, trim(nml), lon, lat, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init')
  call check(h1 > 0, 'init returns a positive handle')

  call precipdiff_shapes(h1, nl, nt, nlf, ntf, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'shapes')
  call check(nl == nlon .and. nt == nlat .and. nlf == nlon*r .and. ntf == nlat*r, &
       'shapes are (nlon, nlat, nlon_fine, nlat_fine)')
  call precipdiff_fine_coords(h1, lonf, latf, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'fine_coords')
  call check(abs(lonf(1) - lon(1)) < 1d-12 .and. abs(lonf(nlon*r) - lon(nlon)) < 1d-12, &
       'fine longitudes span the grid')

  call precipdiff_required_fields(h1, names, nn, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'required_fields')
  call check(nn == 2 .and. names(1) == 'hus850' .and. names(2) == 'psl', &
       'required fields are hus850, psl')

  ! Window of two 3600 s steps: step 1 not ready, step 2 ready with the mean.
  pr_fine = -1.0d0
  pr_model = -1.0d0
  call precipdiff_set_field(h1, 'hus850', q, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'set_field real(8) 2-D')
  call precipdiff_set_field(h1, 'psl', psl, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'set_field psl')
  call precipdiff_run(h1, 3600.0d0, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'run step 1')
  call check(.not. ready, 'not ready before the window closes')
  call check(all(pr_model == -1.0d0) .and. all(pr_fine == -1.0d0), &
       'outputs untouched when not ready')

  q4 = real(2.0d0*q, 4)
  call precipdiff_set_field(h1, 'hus850', q4, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'set_field real(4) 2-D')
  call precipdiff_set_field(h1, 'psl', psl, errmsg, errflg)
  call precipdiff_run(h1, 7200.0d0, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'run step 2')
  call check(ready, 'ready when the window closes')
  expect = (q + real(q4, 8))/2.0d0 + (psl + psl)/2.0d0
  call check(all(abs(pr_model - expect) <= 1d-12*abs(expect)), 'pr_model is the window mean (no transpose)')
  do j = 1, nlat*r
    do i = 1, nlon*r
      if (pr_fine(i, j) /= pr_model((i - 1)/r + 1, (j - 1)/r + 1)) then
        call check(.false., 'pr_fine repeats pr_model on the fine grid')
        exit
      end if
    end do
  end do

  ! Field-stack form of precipdiff_run, real(4).
  stack4(:, :, 1) = real(q, 4)
  stack4(:, :, 2) = real(psl, 4)
  call precipdiff_run(h1, 10800.0d0, 3600.0d0, ['hus850', 'psl   '], stack4, pr_fine, &
       pr_model, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'run with a stack of real(4) fields')
  call precipdiff_run(h1, 14400.0d0, 3600.0d0, ['hus850', 'psl   '], real(stack4, 8), &
       pr_fine, pr_model, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'run with a stack of real(8) fields')
  expect = real(stack4(:, :, 1), 8) + real(stack4(:, :, 2), 8)
  call check(ready .and. all(abs(pr_model - expect) <= 1d-12*abs(expect)), &
       'stack form gives the window mean')

  ! 3-D field with pressure: the fake takes the level nearest 850 hPa.
  plev = [100000.0d0, 85000.0d0, 50000.0d0]
  do k = 1, 3
    hus3(:, :, k) = q*k
    p3(:, :, k) = plev(k)
  end do
  call precipdiff_set_field(h1, 'hus850', hus3, p3, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'set_field real(8) 3-D with pressure')
  call precipdiff_set_field(h1, 'psl', psl, errmsg, errflg)
  call precipdiff_step(h1, 18000.0d0, 3600.0d0, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'step')
  call precipdiff_set_field(h1, 'hus850', real(hus3, 4), real(p3, 4), errmsg, errflg)
  call expect_ok(errflg, errmsg, 'set_field real(4) 3-D with pressure')
  call precipdiff_set_field(h1, 'psl', psl, errmsg, errflg)

  ! Restart in the middle of a window, in a second instance, gives the same result.
  call precipdiff_write_restart(h1, trim(restart), errmsg, errflg)
  call expect_ok(errflg, errmsg, 'write_restart')
  ! comm given without MPI running: accepted, and MPI is not initialised behind our back.
  call precipdiff_init(h2, trim(nml), real(lon, 4), real(lat, 4), errmsg, errflg, comm=0)
  call expect_ok(errflg, errmsg, 'second instance (real(4) coordinates, comm)')
  call check(h2 > 0 .and. h2 /= h1, 'second handle differs')
  call precipdiff_read_restart(h2, trim(restart), errmsg, errflg)
  call expect_ok(errflg, errmsg, 'read_restart')
  call precipdiff_run(h1, 21600.0d0, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  expect = pr_model
  call precipdiff_step(h2, 21600.0d0, 3600.0d0, ready, errmsg, errflg)
  call precipdiff_get_output(h2, pr_fine, pr_model, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'get_output after restart')
  call check(ready .and. all(pr_model == expect), 'restarted instance matches the original')
  call check(all(pr_model == (2*q + real(real(2*q, 4), 8))/2 + psl), &
       '3-D fields: level nearest 850 hPa selected, real(4) and real(8)')

  call precipdiff_finalize(h1, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize 1')
  call check(h1 == PD_NO_HANDLE, 'finalize resets the handle')
  call precipdiff_finalize(h1, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize is idempotent')
  call precipdiff_finalize(h2, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize 2')
  call finish()
end program test_lifecycle

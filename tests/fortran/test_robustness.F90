!> Errors never corrupt state or kill the host (issue #11, items 1-3), with the real
!! Plugin logic (pd_engine_plugin.EnginePlugin: production clock, accumulator, seeds,
!! restarts; an arithmetic engine instead of the networks).
!!
!! 1. A window whose close fails (a field never set) is discarded as a whole: the next
!!    window equals the same window of a clean run (sums, window index, seeds).
!! 2. errmsg buffers of any length, 1 included, receive a truncated message; nothing
!!    writes past them (double init, names/fields count mismatch, plugin errors).
!! 3. Restarts refuse another grid of the same shape (flipped latitudes, shifted
!!    longitudes); a restart written before any window closed restores no output.
!! Argument 1: the namelist (engine.nml); argument 2: a scratch directory.
program test_robustness
  use precipdiff
  use pd_test_utils
  implicit none
  integer, parameter :: nlon = 8, nlat = 6
  real(8), parameter :: dt = 21600.0d0
  integer :: ha = PD_NO_HANDLE, hb = PD_NO_HANDLE, hc = PD_NO_HANDLE, errflg, i, step
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=8) :: short
  character(len=1) :: tiny
  character(len=512) :: nml, scratch
  real(8) :: lon(nlon), lat(nlat), q(nlon, nlat), psl(nlon, nlat), stack(nlon, nlat, 2)
  real(8) :: fine_a(2*nlon, 2*nlat), model_a(nlon, nlat)
  real(8) :: fine_b(2*nlon, 2*nlat), model_b(nlon, nlat)
  logical :: ready

  call get_command_argument(1, nml)
  call get_command_argument(2, scratch)
  lon = [(1.0d0*i, i = 1, nlon)]
  lat = [(40.0d0 + i, i = 0, nlat - 1)]

  ! ------------------------------------------------- 1. a failed window close
  call precipdiff_init(ha, trim(nml), lon, lat, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init A')
  call precipdiff_init(hb, trim(nml), lon, lat, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init B')
  ! Window 0 of A: psl is never set, so its close fails.
  do step = 1, 4
    call fields(step, q, psl)
    call precipdiff_set_field(ha, 'hus850', q, errmsg, errflg)
    call precipdiff_run(ha, step*dt, dt, fine_a, model_a, ready, errmsg, errflg)
  end do
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'without field', &
       'psl', 'discarded'], 'window 0 fails to close and is discarded')
  ! Window 1 in A (after the failure) and in B (a clean run starting at window 1).
  do step = 5, 8
    call fields(step, q, psl)
    call precipdiff_set_field(ha, 'hus850', q, errmsg, errflg)
    call precipdiff_set_field(ha, 'psl', psl, errmsg, errflg)
    call precipdiff_run(ha, step*dt, dt, fine_a, model_a, ready, errmsg, errflg)
    call precipdiff_set_field(hb, 'hus850', q, errmsg, errflg)
    call precipdiff_set_field(hb, 'psl', psl, errmsg, errflg)
    call precipdiff_run(hb, step*dt, dt, fine_b, model_b, ready, errmsg, errflg)
  end do
  call expect_ok(errflg, errmsg, 'window 1 closes')
  call check(ready, 'window 1 is ready')
  call check(all(fine_a == fine_b) .and. all(model_a == model_b), &
       'window 1 after a failed window 0 equals window 1 of a clean run (bit for bit)')

  ! ------------------------------------------------- 2. short errmsg buffers
  call precipdiff_init(ha, trim(nml), lon, lat, short, errflg)
  call check(errflg == PD_ERR_ALREADY_INITIALISED .and. short == 'precipdi', &
       'double init with errmsg len=8: code and truncated message')
  call precipdiff_init(ha, trim(nml), lon, lat, tiny, errflg)
  call check(errflg == PD_ERR_ALREADY_INITIALISED .and. tiny == 'p', &
       'double init with errmsg len=1')
  call precipdiff_run(ha, 9*dt, dt, [character(len=8) :: 'hus850', 'psl', 'extra'], stack, &
       fine_a, model_a, ready, short, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. short == 'precipdi', &
       'names/fields count mismatch with errmsg len=8')
  call precipdiff_run(ha, 9*dt, dt, [character(len=8) :: 'hus850'], stack, &
       fine_a, model_a, ready, tiny, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT .and. tiny == 'p', &
       'names/fields count mismatch with errmsg len=1')
  call precipdiff_set_field(ha, 'no_such_field', q, tiny, errflg)
  call check(errflg == PD_ERR_INPUT .and. tiny == 'p', 'a plugin error with errmsg len=1')
  call precipdiff_set_field(ha, 'hus850', q(1:2, :), short, errflg)
  call check(errflg == PD_ERR_INVALID_ARGUMENT, 'wrong shape with errmsg len=8')

  ! ------------------------------------------------- 3. restart identity
  call precipdiff_write_restart(hb, trim(scratch)//'/b.nc', errmsg, errflg)
  call expect_ok(errflg, errmsg, 'write restart of B')
  call precipdiff_init(hc, trim(nml), lon, lat(nlat:1:-1), errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init C on the flipped grid (same shape)')
  call precipdiff_read_restart(hc, trim(scratch)//'/b.nc', errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'grid'], &
       'restart from another grid of the same shape (flipped latitudes) is refused')
  call precipdiff_finalize(hc, errmsg, errflg)
  call precipdiff_init(hc, trim(nml), lon + 10.0d0, lat, errmsg, errflg)
  call precipdiff_read_restart(hc, trim(scratch)//'/b.nc', errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'grid'], &
       'restart from another grid of the same shape (shifted longitudes) is refused')
  call precipdiff_finalize(hc, errmsg, errflg)
  ! A restart written before any window closed holds no output.
  call precipdiff_init(hc, trim(nml), lon, lat, errmsg, errflg)
  call fields(1, q, psl)
  call precipdiff_set_field(hc, 'hus850', q, errmsg, errflg)
  call precipdiff_set_field(hc, 'psl', psl, errmsg, errflg)
  call precipdiff_run(hc, dt, dt, fine_a, model_a, ready, errmsg, errflg)
  call precipdiff_write_restart(hc, trim(scratch)//'/early.nc', errmsg, errflg)
  call expect_ok(errflg, errmsg, 'restart written before any window closed')
  call precipdiff_finalize(hc, errmsg, errflg)
  call precipdiff_init(hc, trim(nml), lon, lat, errmsg, errflg)
  call precipdiff_read_restart(hc, trim(scratch)//'/early.nc', errmsg, errflg)
  call expect_ok(errflg, errmsg, 'read the early restart')
  call precipdiff_get_output(hc, fine_a, model_a, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'no output yet'], &
       'no output after restoring a restart written before any window closed')
  ! ... and the restored run continues: its first window equals B's window 0.
  do step = 2, 4
    call fields(step, q, psl)
    call precipdiff_set_field(hc, 'hus850', q, errmsg, errflg)
    call precipdiff_set_field(hc, 'psl', psl, errmsg, errflg)
    call precipdiff_run(hc, step*dt, dt, fine_a, model_a, ready, errmsg, errflg)
  end do
  call check(errflg == 0 .and. ready, 'the restored run closes its window')

  call precipdiff_finalize(ha, errmsg, errflg)
  call precipdiff_finalize(hb, errmsg, errflg)
  call precipdiff_finalize(hc, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize')
  call finish()

contains

  !> Smooth fields that change with the step.
  subroutine fields(step, q, psl)
    integer, intent(in) :: step              !! step number
    real(8), intent(out) :: q(nlon, nlat)    !! specific humidity, kg/kg
    real(8), intent(out) :: psl(nlon, nlat)  !! sea-level pressure, Pa
    integer :: ii, jj
    do jj = 1, nlat
      do ii = 1, nlon
        q(ii, jj) = 0.006d0 + 0.002d0*sin(0.3d0*ii + 0.2d0*jj + 0.4d0*step)
        psl(ii, jj) = 101000.0d0 + 500.0d0*cos(0.2d0*ii - 0.3d0*jj + 0.5d0*step)
      end do
    end do
  end subroutine fields
end program test_robustness

!> toy_esm: a small global Earth-system-model stand-in coupled online to precipdiff.
!>
!> Column water vapour W (kg m-2) on a global cell-centred lat-lon grid is
!> carried by prescribed, time-varying 10 m winds (mass-conserving upwind finite
!> volumes, periodic in longitude), fed by evaporation over an SST-like latitude
!> profile and drained by the precipitation the precipdiff plugin hands back:
!>
!>     dW/dt + div(W v) = E - P
!>
!> Every timestep the model gives the plugin the fields its bundle needs (u10,
!> v10, msl); when the plugin's daily window closes it returns the day's
!> precipitation on the model grid, which is the sink P for the following day
!> (the usual lagged coupling of an expensive parameterization), limited by the
!> water available in each column. The limited amount is counted and reported,
!> never dropped silently. Each day the model prints its global water budget
!> and stability diagnostics and writes a CF-netCDF record.
!>
!> Usage:  toy_esm [NAMELIST] [key=value ...]
!>   NAMELIST  file with &toy_esm_nml (default toy_esm.nml); &precipdiff_nml is
!>             read from the file named by precipdiff_namelist (default: the same file).
!>   key=value overrides any &toy_esm_nml entry, e.g. ndays=3 nlat=90 nlon=180.
!>   restart_out / restart_in (path prefixes) write / continue from a restart of
!>   the model and of the plugin.
program toy_esm
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use toy_physics
  use toy_output
  use precipdiff, only: precipdiff_init, precipdiff_run, precipdiff_set_field, &
       precipdiff_finalize, precipdiff_shapes, precipdiff_fine_coords, &
       precipdiff_required_fields, precipdiff_write_restart, precipdiff_read_restart, &
       PD_NO_HANDLE, PD_ERRMSG_LEN
  implicit none

  ! ---- &toy_esm_nml ------------------------------------------------------------
  integer :: ndays = 3                        ! simulated days
  integer :: nlon = 360                       ! longitudes (1 degree)
  integer :: nlat = 180                       ! latitudes (1 degree, cell-centred: no pole points)
  real(dp) :: dt = 1800.0_dp                  ! timestep (s); must divide a day
  logical :: use_plugin = .true.              ! .false.: no precipitation (dynamics/evaporation check)
  logical :: write_fine = .true.              ! write the plugin's fine-grid precipitation too
  character(len=512) :: output_file = 'toy_esm_out.nc'
  character(len=512) :: precipdiff_namelist = ''   ! file with &precipdiff_nml ('' = this file)
  character(len=32) :: start_date = '2000-01-01 00:00:00'  ! date of model time 0 (match reference_time)
  real(dp) :: wave_amplitude_pa = 1200.0_dp   ! travelling lows/highs amplitude (Pa)
  real(dp) :: evap_timescale_days = 5.0_dp    ! evaporation relaxation time (days)
  character(len=512) :: restart_in = ''       ! continue from this restart prefix ('' = cold start)
  character(len=512) :: restart_out = ''      ! write a restart with this prefix at the end ('' = none)
  namelist /toy_esm_nml/ ndays, nlon, nlat, dt, use_plugin, write_fine, output_file, &
       precipdiff_namelist, start_date, wave_amplitude_pa, evap_timescale_days, &
       restart_in, restart_out

  type(toy_grid_t) :: grid
  type(toy_params_t) :: params
  type(toy_output_t) :: out
  type(toy_budget_t) :: budget
  real(dp), allocatable :: water(:, :), msl(:, :), u10(:, :), v10(:, :), evap(:, :)
  real(dp), allocatable :: msl_day(:, :), u10_day(:, :), v10_day(:, :), evap_day(:, :)
  real(dp), allocatable :: pr_rate(:, :), pr_model(:, :), pr_fine(:, :), pr_out(:, :)
  real(dp), allocatable :: lon_fine(:), lat_fine(:), sink(:, :), lim(:, :)
  character(len=32) :: required(16)
  integer, allocatable :: field_kind(:)
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: nml_file, arg
  character(len=1024) :: history
  character(len=600) :: nml_line
  integer :: errflg, handle, nreq, k, nsteps, day, day0, iday, step, nsub, nlon_p, nlat_p, nlon_f, nlat_f
  integer :: nan_out, neg_out, iarg, ios, unit
  integer(8) :: clock0, clock1, clock_day, clock_rate, clock_plugin, c0, c1
  real(dp) :: t, t_end, cour, plugin_seconds, total_seconds
  logical :: ready, got_output

  handle = PD_NO_HANDLE

  ! ---- configuration -------------------------------------------------------------
  nml_file = 'toy_esm.nml'
  if (command_argument_count() >= 1) then
    call get_command_argument(1, nml_file)
    if (index(nml_file, '=') > 0) nml_file = 'toy_esm.nml'
  end if
  open (newunit=unit, file=trim(nml_file), status='old', action='read', iostat=ios)
  if (ios /= 0) call fail('cannot open namelist file "' // trim(nml_file) // '"')
  read (unit, nml=toy_esm_nml, iostat=ios)
  if (ios /= 0) then
    write (errmsg, '(a,i0,a)') 'cannot read &toy_esm_nml from "' // trim(nml_file) // &
         '" (iostat ', ios, '): check the group exists and every key is known'
    call fail(trim(errmsg))
  end if
  close (unit)
  do iarg = 1, command_argument_count()
    call get_command_argument(iarg, arg)
    if (index(arg, '=') == 0) cycle
    nml_line = '&toy_esm_nml ' // trim(arg) // ' /'
    read (nml_line, nml=toy_esm_nml, iostat=ios)
    if (ios /= 0) call fail('command-line override "' // trim(arg) // &
         '" is not a valid &toy_esm_nml assignment')
  end do
  if (ndays < 1) call fail('ndays must be >= 1')
  if (dt <= 0.0_dp .or. abs(seconds_per_day / dt - nint(seconds_per_day / dt)) > 1.0e-9_dp) then
    write (errmsg, '(a,es12.4,a)') 'dt = ', dt, ' s must be positive and divide a day (86400 s)'
    call fail(trim(errmsg))
  end if
  if (len_trim(precipdiff_namelist) == 0) precipdiff_namelist = nml_file
  nsteps = nint(seconds_per_day / dt)
  params%wave_amplitude_pa = wave_amplitude_pa
  params%evap_timescale_days = evap_timescale_days

  call grid_init(grid, nlon, nlat, errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))
  allocate (water(nlon, nlat), msl(nlon, nlat), u10(nlon, nlat), v10(nlon, nlat), &
            evap(nlon, nlat), msl_day(nlon, nlat), u10_day(nlon, nlat), v10_day(nlon, nlat), &
            evap_day(nlon, nlat), pr_rate(nlon, nlat), pr_model(nlon, nlat), pr_out(nlon, nlat), &
            sink(nlon, nlat), lim(nlon, nlat))
  pr_rate = 0.0_dp
  pr_model = 0.0_dp
  pr_out = 0.0_dp

  write (*, '(a)') 'toy_esm: global moisture model coupled to precipdiff'
  write (*, '(a,i0,a,i0,a,f7.1,a,i0,a)') 'toy_esm: grid ', nlon, ' x ', nlat, ', dt ', dt, &
       ' s, ', ndays, ' days'

  ! ---- plugin start-up ---------------------------------------------------------------
  call system_clock(clock0, clock_rate)
  clock_plugin = 0
  nlon_f = 0
  nlat_f = 0
  if (use_plugin) then
    call system_clock(c0)
    call precipdiff_init(handle, trim(precipdiff_namelist), grid%lon_deg, grid%lat_deg, errmsg, errflg)
    call check_plugin('precipdiff_init')
    call precipdiff_shapes(handle, nlon_p, nlat_p, nlon_f, nlat_f, errmsg, errflg)
    call check_plugin('precipdiff_shapes')
    if (nlon_p /= nlon .or. nlat_p /= nlat) call fail('plugin reports a model grid shape different from ours')
    allocate (lon_fine(nlon_f), lat_fine(nlat_f), pr_fine(nlon_f, nlat_f))
    pr_fine = 0.0_dp
    call precipdiff_fine_coords(handle, lon_fine, lat_fine, errmsg, errflg)
    call check_plugin('precipdiff_fine_coords')
    call precipdiff_required_fields(handle, required, nreq, errmsg, errflg)
    call check_plugin('precipdiff_required_fields')
    if (nreq > size(required)) call fail('the bundle needs more fields than toy_esm can name')
    allocate (field_kind(nreq))
    do k = 1, nreq
      field_kind(k) = field_for(required(k))
      if (field_kind(k) == 0) call fail('the bundle needs field "' // trim(required(k)) // &
           '" but toy_esm only provides u10 (uas), v10 (vas) and msl (psl)')
    end do
    call system_clock(c1)
    clock_plugin = clock_plugin + (c1 - c0)
    write (*, '(a,i0,a,i0,a,100(1x,a))') 'toy_esm: plugin ready, fine grid ', nlon_f, ' x ', nlat_f, &
         ', fields:', (trim(required(k)), k = 1, nreq)
  else
    allocate (lon_fine(0), lat_fine(0), pr_fine(0, 0))
    write (*, '(a)') 'toy_esm: use_plugin = .false.: no precipitation (dynamics check)'
  end if
  if (.not. write_fine) then
    deallocate (lon_fine, lat_fine)
    allocate (lon_fine(0), lat_fine(0))
  end if

  ! ---- initial state: 80 % of saturation, or a restart ---------------------------------
  day0 = 0
  if (len_trim(restart_in) > 0) then
    call restart_read(trim(restart_in) // '.toy.nc', water, pr_rate, pr_out, day0, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    if (use_plugin) then
      call precipdiff_read_restart(handle, trim(restart_in) // '.plugin.nc', errmsg, errflg)
      call check_plugin('precipdiff_read_restart')
    end if
    write (*, '(a,i0)') 'toy_esm: restarted from ' // trim(restart_in) // ' after day ', day0
  else
    do k = 1, nlat
      water(:, k) = 0.8_dp * saturation_water(grid%lat_deg(k))
    end do
  end if

  write (history, '(a)') 'toy_esm run with namelist ' // trim(nml_file)
  call output_open(out, trim(output_file), grid, trim(start_date), lon_fine, lat_fine, &
                   trim(history), errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))

  write (*, '(a)') 'toy_esm:  day   water    evap  precip limited     residual   w_min   w_max' // &
       ' courant nan  wall_s'
  write (*, '(a)') 'toy_esm:       kg m-2  kg m-2  kg m-2  kg m-2       kg m-2  kg m-2  kg m-2'

  ! ---- time loop ----------------------------------------------------------------------
  call prescribed_atmosphere(grid, params, day0 * seconds_per_day, msl, u10, v10)
  do iday = 1, ndays
    day = day0 + iday
    call system_clock(clock_day)
    budget = toy_budget_t()
    budget%water_start = grid_global_mean(grid, water)
    msl_day = 0.0_dp
    u10_day = 0.0_dp
    v10_day = 0.0_dp
    evap_day = 0.0_dp
    got_output = .false.
    nan_out = 0
    neg_out = 0
    do step = 1, nsteps
      t = ((day - 1) * nsteps + (step - 1)) * dt
      t_end = t + dt

      ! Dynamics: transport by the winds at the start of the step (forward in time).
      call advect_upwind(grid, water, u10, v10, dt, nsub)
      cour = courant_max(grid, u10, v10, dt) / nsub
      budget%courant = max(budget%courant, cour)

      ! Evaporation source.
      call evaporation(grid, params, water, u10, v10, evap)
      water = water + evap * dt
      evap_day = evap_day + evap / nsteps
      budget%evap = budget%evap + grid_global_mean(grid, evap) * dt

      ! Precipitation sink: the plugin's latest rate, limited by the water in the column.
      sink = min(pr_rate * dt, water)
      lim = pr_rate * dt - sink
      water = water - sink
      budget%precip = budget%precip + grid_global_mean(grid, sink)
      budget%precip_requested = budget%precip_requested + grid_global_mean(grid, pr_rate) * dt
      budget%limited = budget%limited + grid_global_mean(grid, lim)

      ! The prescribed atmosphere at the end of the step: the state handed to the
      ! plugin now and the winds of the next step.
      call prescribed_atmosphere(grid, params, t_end, msl, u10, v10)
      msl_day = msl_day + msl / nsteps
      u10_day = u10_day + u10 / nsteps
      v10_day = v10_day + v10 / nsteps

      ! Coupling: hand the plugin the state at t_end; collect the day's precipitation.
      if (use_plugin) then
        call system_clock(c0)
        do k = 1, nreq
          select case (field_kind(k))
          case (1)
            call precipdiff_set_field(handle, trim(required(k)), u10, errmsg, errflg)
          case (2)
            call precipdiff_set_field(handle, trim(required(k)), v10, errmsg, errflg)
          case (3)
            call precipdiff_set_field(handle, trim(required(k)), msl, errmsg, errflg)
          end select
          call check_plugin('precipdiff_set_field(' // trim(required(k)) // ')')
        end do
        ! model_time is the END of the step, the time the fields just set are valid at.
        call precipdiff_run(handle, t_end, dt, pr_fine, pr_model, ready, errmsg, errflg)
        call check_plugin('precipdiff_run')
        call system_clock(c1)
        clock_plugin = clock_plugin + (c1 - c0)
        if (ready .and. step /= nsteps) then
          write (errmsg, '(a,i0,a,i0,a,i0,a)') 'the plugin closed its window at step ', step, ' of ', &
               nsteps, ' on day ', day, ', not at the end of the day: window_s in &precipdiff_nml ' // &
               'must be 86400 and model_time must follow the plugin''s convention'
          call fail(trim(errmsg))
        end if
        if (ready) then
          got_output = .true.
          nan_out = nan_out + count(.not. ieee_is_finite(pr_model)) + count(.not. ieee_is_finite(pr_fine))
          neg_out = neg_out + count(pr_model < 0.0_dp)
          ! Negative or non-finite precipitation is never used as a sink (it is
          ! counted above and stops the run at the end of the day).
          where (ieee_is_finite(pr_model))
            pr_rate = max(pr_model, 0.0_dp)
          elsewhere
            pr_rate = 0.0_dp
          end where
          pr_out = pr_model
        end if
      end if
    end do

    budget%water_end = grid_global_mean(grid, water)
    budget%residual = (budget%water_end - budget%water_start) - (budget%evap - budget%precip)
    budget%water_min = minval(water)
    budget%water_max = maxval(water)
    budget%nan_count = count(.not. ieee_is_finite(water)) + nan_out
    call output_write_day(out, real(day - 1, dp), real(day, dp), pr_out, water, evap_day, &
                          u10_day, v10_day, msl_day, pr_fine, budget, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    call system_clock(c1)
    write (*, '(a,i5,4f8.3,es13.3,2f8.2,f8.3,i4,f8.2)') 'toy_esm: ', day, budget%water_end, &
         budget%evap, budget%precip, budget%limited, budget%residual, budget%water_min, &
         budget%water_max, budget%courant, budget%nan_count, real(c1 - clock_day, dp) / clock_rate
    if (use_plugin .and. .not. got_output) then
      write (*, '(a,i0,a)') 'toy_esm: note: the plugin returned no new precipitation during day ', day, &
           ' (lagged inference hands a window back when the next one closes)'
    end if
    if (neg_out > 0) then
      write (*, '(a,i0,a,i0)') 'toy_esm: warning: ', neg_out, &
           ' negative precipitation values from the plugin on day ', day
    end if
    if (budget%nan_count > 0) then
      write (errmsg, '(a,i0,a,i0)') 'non-finite values on day ', day, ': ', budget%nan_count
      call fail(trim(errmsg))
    end if
  end do

  if (len_trim(restart_out) > 0) then
    call restart_write(trim(restart_out) // '.toy.nc', water, pr_rate, pr_out, day0 + ndays, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    if (use_plugin) then
      call precipdiff_write_restart(handle, trim(restart_out) // '.plugin.nc', errmsg, errflg)
      call check_plugin('precipdiff_write_restart')
    end if
    write (*, '(a,i0)') 'toy_esm: restart written to ' // trim(restart_out) // ' after day ', day0 + ndays
  end if

  call system_clock(clock1)
  total_seconds = real(clock1 - clock0, dp) / clock_rate
  plugin_seconds = real(clock_plugin, dp) / clock_rate
  call output_close(out, errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))
  if (use_plugin) then
    call precipdiff_finalize(handle, errmsg, errflg)
    call check_plugin('precipdiff_finalize')
  end if
  write (*, '(a,f9.2,a,f9.3,a,f9.3,a)') 'toy_esm: wall time ', total_seconds, ' s, ', &
       total_seconds / ndays, ' s per simulated day (plugin incl. start-up ', &
       plugin_seconds / ndays, ' s per day)'
  write (*, '(a)') 'toy_esm: output written to ' // trim(output_file)

contains

  !> Which model field answers a name the bundle asks for (0: none).
  integer function field_for(name)
    character(len=*), intent(in) :: name
    select case (trim(lower(name)))
    case ('u10', 'uas', '10u', 'eastward_wind')
      field_for = 1
    case ('v10', 'vas', '10v', 'northward_wind')
      field_for = 2
    case ('msl', 'psl', 'slp', 'air_pressure_at_mean_sea_level')
      field_for = 3
    case default
      field_for = 0
    end select
  end function field_for

  pure function lower(s) result(r)
    character(len=*), intent(in) :: s
    character(len=len(s)) :: r
    integer :: i
    r = s
    do i = 1, len(s)
      if (s(i:i) >= 'A' .and. s(i:i) <= 'Z') r(i:i) = achar(iachar(s(i:i)) + 32)
    end do
  end function lower

  !> After every plugin call: print the plugin's message and stop the model on error.
  subroutine check_plugin(what)
    character(len=*), intent(in) :: what
    if (errflg /= 0) then
      write (*, '(a,i0,a)') 'toy_esm: ' // what // ' failed (errflg = ', errflg, '):'
      write (*, '(a)') '  ' // trim(errmsg)
      call fail(what // ' failed')
    end if
  end subroutine check_plugin

  !> The host model (not the library) decides to stop: finalize the plugin, close
  !> the output and exit with status 1.
  subroutine fail(message)
    character(len=*), intent(in) :: message
    character(len=PD_ERRMSG_LEN) :: msg2
    integer :: flg2
    write (*, '(a)') 'toy_esm: error: ' // message
    if (handle /= PD_NO_HANDLE) call precipdiff_finalize(handle, msg2, flg2)
    call output_close(out, msg2, flg2)
    error stop 1
  end subroutine fail

end program toy_esm

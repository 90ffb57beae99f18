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
!>
!> Built twice: toy_esm (one process) and, with MPI, toy_esm_mpi (mpirun -np N
!> toy_esm_mpi ...): each rank owns a band of latitude rows, exchanges one halo
!> row per advection sub-step and drives the plugin through precipdiff_mpi; the
!> fields are the same on any number of ranks (see toy_parallel.F90).
program toy_esm
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use toy_physics
  use toy_output
  use toy_parallel
  use precipdiff, only: PD_NO_HANDLE, PD_ERRMSG_LEN
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
  ! Band arrays: rows 1..nb of this rank, with halo rows 0 and nb+1 where advection needs them.
  real(dp), allocatable :: water(:, :), msl(:, :), u10(:, :), v10(:, :), evap(:, :)
  real(dp), allocatable :: msl_day(:, :), u10_day(:, :), v10_day(:, :), evap_day(:, :)
  real(dp), allocatable :: pr_rate(:, :), pr_model(:, :), pr_fine(:, :), pr_out(:, :)
  real(dp), allocatable :: sink(:, :), lim(:, :)
  ! Global arrays (rank 0) for output and restarts.
  real(dp), allocatable :: g_water(:, :), g_pr(:, :), g_evap(:, :), g_u(:, :), g_v(:, :)
  real(dp), allocatable :: g_msl(:, :), g_rate(:, :), g_fine(:, :)
  real(dp), allocatable :: lon_fine(:), lat_fine(:), lon_out(:), lat_out(:)
  character(len=32) :: required(16)
  integer, allocatable :: field_kind(:)
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: nml_file, arg
  character(len=1024) :: history
  character(len=600) :: nml_line
  integer :: errflg, handle, nreq, k, nsteps, day, day0, iday, step, nsub, isub, nb
  integer :: nlon_p, nlat_p, nlon_f, nlat_f, gfine(2), fstart(2)
  integer :: nan_out, neg_out, iarg, ios, unit
  integer(8) :: clock0, clock1, clock_day, clock_rate, clock_plugin, c0, c1
  real(dp) :: t, t_end, cour, plugin_seconds, total_seconds, loc_evap, loc_pr, loc_req, loc_lim
  logical :: ready, got_output, root

  handle = PD_NO_HANDLE
  call par_init()
  root = my_rank == 0

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
  call par_decompose(nlat, errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))
  nb = n_band
  allocate (water(nlon, 0:nb + 1), msl(nlon, 0:nb + 1), u10(nlon, 0:nb + 1), v10(nlon, 0:nb + 1), &
            evap(nlon, nb), msl_day(nlon, nb), u10_day(nlon, nb), v10_day(nlon, nb), &
            evap_day(nlon, nb), pr_rate(nlon, nb), pr_model(nlon, nb), pr_out(nlon, nb), &
            sink(nlon, nb), lim(nlon, nb))
  allocate (g_water(nlon, nlat), g_pr(nlon, nlat), g_evap(nlon, nlat), g_u(nlon, nlat), &
            g_v(nlon, nlat), g_msl(nlon, nlat), g_rate(nlon, nlat))
  water = 0.0_dp
  pr_rate = 0.0_dp
  pr_model = 0.0_dp
  pr_out = 0.0_dp
  g_rate = 0.0_dp

  if (root) then
    write (*, '(a)') 'toy_esm: global moisture model coupled to precipdiff'
    write (*, '(a,i0,a,i0,a,f7.1,a,i0,a,i0,a)') 'toy_esm: grid ', nlon, ' x ', nlat, ', dt ', dt, &
         ' s, ', ndays, ' days, ', n_ranks, ' process(es)'
  end if

  ! ---- plugin start-up ---------------------------------------------------------------
  call system_clock(clock0, clock_rate)
  clock_plugin = 0
  nlon_f = 0
  nlat_f = 0
  gfine = 0
  fstart = 1
  if (use_plugin) then
    call system_clock(c0)
    call plug_init(handle, trim(precipdiff_namelist), grid%lon_deg, &
                   grid%lat_deg(j_first:j_first + nb - 1), nlat, errmsg, errflg)
    call check_plugin('precipdiff_init')
    call plug_shapes(handle, nlon_p, nlat_p, nlon_f, nlat_f, gfine, fstart, errmsg, errflg)
    call check_plugin('precipdiff_shapes')
    if (nlon_p /= nlon .or. nlat_p /= nb) call fail('plugin reports a model grid shape different from ours')
    allocate (lon_fine(nlon_f), lat_fine(nlat_f), pr_fine(nlon_f, nlat_f), g_fine(gfine(1), gfine(2)))
    pr_fine = 0.0_dp
    g_fine = 0.0_dp
    call plug_fine_coords(handle, lon_fine, lat_fine, errmsg, errflg)
    call check_plugin('precipdiff_fine_coords')
    call plug_required(handle, required, nreq, errmsg, errflg)
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
    if (root) write (*, '(a,i0,a,i0,a,100(1x,a))') 'toy_esm: plugin ready, fine grid ', gfine(1), &
         ' x ', gfine(2), ', fields:', (trim(required(k)), k = 1, nreq)
  else
    allocate (lon_fine(0), lat_fine(0), pr_fine(0, 0), g_fine(0, 0))
    if (root) write (*, '(a)') 'toy_esm: use_plugin = .false.: no precipitation (dynamics check)'
  end if
  ! Fine-grid coordinates of the output: the whole fine grid (rank 0's block when it
  ! holds everything, else assembled from every rank's block).
  if (write_fine .and. use_plugin) then
    allocate (lon_out(gfine(1)), lat_out(gfine(2)))
    call fine_coords_global()
  else
    allocate (lon_out(0), lat_out(0))
  end if

  ! ---- initial state: 80 % of saturation, or a restart ---------------------------------
  day0 = 0
  if (len_trim(restart_in) > 0) then
    g_water = 0.0_dp
    if (root) then
      call restart_read(trim(restart_in) // '.toy.nc', g_water, g_rate, g_pr, day0, errmsg, errflg)
      if (errflg /= 0) call fail(trim(errmsg))
    end if
    call par_bcast_int(day0)
    call par_scatter(g_water, water(:, 1:nb))
    call par_scatter(g_rate, pr_rate)
    call par_scatter(g_pr, pr_out)
    if (use_plugin) then
      call plug_read_restart(handle, trim(restart_in) // '.plugin.nc', errmsg, errflg)
      call check_plugin('precipdiff_read_restart')
    end if
    if (root) write (*, '(a,i0)') 'toy_esm: restarted from ' // trim(restart_in) // ' after day ', day0
  else
    do k = 1, nb
      water(:, k) = 0.8_dp * saturation_water(grid%lat_deg(j_first + k - 1))
    end do
  end if

  if (root) then
    write (history, '(a)') 'toy_esm run with namelist ' // trim(nml_file)
    call output_open(out, trim(output_file), grid, trim(start_date), lon_out, lat_out, &
                     trim(history), errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    write (*, '(a)') 'toy_esm:  day   water    evap  precip limited     residual   w_min   w_max' // &
         ' courant nan  wall_s'
    write (*, '(a)') 'toy_esm:       kg m-2  kg m-2  kg m-2  kg m-2       kg m-2  kg m-2  kg m-2'
  end if

  ! ---- time loop ----------------------------------------------------------------------
  ! Atmosphere (with halo rows for the face winds) at the start of the first step.
  call prescribed_atmosphere(grid, params, day0 * seconds_per_day, msl, u10, v10, j_first - 1)
  do iday = 1, ndays
    day = day0 + iday
    call system_clock(clock_day)
    budget = toy_budget_t()
    budget%water_start = par_sum(band_mean_part(grid, water(:, 1:nb), j_first))
    msl_day = 0.0_dp
    u10_day = 0.0_dp
    v10_day = 0.0_dp
    evap_day = 0.0_dp
    loc_evap = 0.0_dp
    loc_pr = 0.0_dp
    loc_req = 0.0_dp
    loc_lim = 0.0_dp
    got_output = .false.
    nan_out = 0
    neg_out = 0
    do step = 1, nsteps
      t = ((day - 1) * nsteps + (step - 1)) * dt
      t_end = t + dt

      ! Dynamics: transport by the winds at the start of the step (forward in
      ! time), sub-cycled when the largest Courant number anywhere exceeds 0.9.
      cour = par_max(courant_max(grid, u10, v10, dt, j_first))
      nsub = max(1, ceiling(cour / 0.9_dp))
      do isub = 1, nsub
        call par_halo(water)
        call advect_step(grid, water, u10, v10, dt / nsub, j_first)
      end do
      budget%courant = max(budget%courant, cour / nsub)

      ! Evaporation source.
      call evaporation(grid, params, water(:, 1:nb), u10(:, 1:nb), v10(:, 1:nb), evap, j_first)
      water(:, 1:nb) = water(:, 1:nb) + evap * dt
      evap_day = evap_day + evap / nsteps
      loc_evap = loc_evap + band_mean_part(grid, evap, j_first) * dt

      ! Precipitation sink: the plugin's latest rate, limited by the water in the column.
      sink = min(pr_rate * dt, water(:, 1:nb))
      lim = pr_rate * dt - sink
      water(:, 1:nb) = water(:, 1:nb) - sink
      loc_pr = loc_pr + band_mean_part(grid, sink, j_first)
      loc_req = loc_req + band_mean_part(grid, pr_rate, j_first) * dt
      loc_lim = loc_lim + band_mean_part(grid, lim, j_first)

      ! The prescribed atmosphere at the end of the step: the state handed to the
      ! plugin now and the winds of the next step.
      call prescribed_atmosphere(grid, params, t_end, msl, u10, v10, j_first - 1)
      msl_day = msl_day + msl(:, 1:nb) / nsteps
      u10_day = u10_day + u10(:, 1:nb) / nsteps
      v10_day = v10_day + v10(:, 1:nb) / nsteps

      ! Coupling: hand the plugin the state at t_end; collect the day's precipitation.
      if (use_plugin) then
        call system_clock(c0)
        do k = 1, nreq
          select case (field_kind(k))
          case (1)
            call plug_set(handle, trim(required(k)), u10(:, 1:nb), errmsg, errflg)
          case (2)
            call plug_set(handle, trim(required(k)), v10(:, 1:nb), errmsg, errflg)
          case (3)
            call plug_set(handle, trim(required(k)), msl(:, 1:nb), errmsg, errflg)
          end select
          call check_plugin('precipdiff_set_field(' // trim(required(k)) // ')')
        end do
        ! model_time is the END of the step, the time the fields just set are valid at.
        call plug_run(handle, t_end, dt, pr_fine, pr_model, ready, errmsg, errflg)
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

    budget%evap = par_sum(loc_evap)
    budget%precip = par_sum(loc_pr)
    budget%precip_requested = par_sum(loc_req)
    budget%limited = par_sum(loc_lim)
    budget%water_end = par_sum(band_mean_part(grid, water(:, 1:nb), j_first))
    budget%residual = (budget%water_end - budget%water_start) - (budget%evap - budget%precip)
    budget%water_min = par_min(minval(water(:, 1:nb)))
    budget%water_max = par_max(maxval(water(:, 1:nb)))
    budget%nan_count = nint(par_sum(real(count(.not. ieee_is_finite(water(:, 1:nb))) + nan_out, dp)))
    neg_out = nint(par_sum(real(neg_out, dp)))
    call par_gather(water(:, 1:nb), g_water)
    call par_gather(pr_out, g_pr)
    call par_gather(evap_day, g_evap)
    call par_gather(u10_day, g_u)
    call par_gather(v10_day, g_v)
    call par_gather(msl_day, g_msl)
    if (write_fine .and. use_plugin) call par_gather_fine(pr_fine, fstart, g_fine)
    call system_clock(c1)
    if (root) then
      call output_write_day(out, real(day - 1, dp), real(day, dp), g_pr, g_water, g_evap, &
                            g_u, g_v, g_msl, g_fine, budget, errmsg, errflg)
      if (errflg /= 0) call fail(trim(errmsg))
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
    end if
    if (budget%nan_count > 0) then
      write (errmsg, '(a,i0,a,i0)') 'non-finite values on day ', day, ': ', budget%nan_count
      call fail(trim(errmsg))
    end if
  end do

  if (len_trim(restart_out) > 0) then
    call par_gather(pr_rate, g_rate)
    if (root) then
      call restart_write(trim(restart_out) // '.toy.nc', g_water, g_rate, g_pr, day0 + ndays, &
                         errmsg, errflg)
      if (errflg /= 0) call fail(trim(errmsg))
    end if
    if (use_plugin) then
      call plug_write_restart(handle, trim(restart_out) // '.plugin.nc', errmsg, errflg)
      call check_plugin('precipdiff_write_restart')
    end if
    if (root) write (*, '(a,i0)') 'toy_esm: restart written to ' // trim(restart_out) // ' after day ', &
         day0 + ndays
  end if

  call system_clock(clock1)
  total_seconds = real(clock1 - clock0, dp) / clock_rate
  plugin_seconds = real(clock_plugin, dp) / clock_rate
  if (root) then
    call output_close(out, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
  end if
  if (use_plugin) then
    call plug_finalize(handle, errmsg, errflg)
    call check_plugin('precipdiff_finalize')
  end if
  if (root) then
    write (*, '(a,f9.2,a,f9.3,a,f9.3,a)') 'toy_esm: wall time ', total_seconds, ' s, ', &
         total_seconds / ndays, ' s per simulated day (plugin incl. start-up ', &
         plugin_seconds / ndays, ' s per day)'
    write (*, '(a)') 'toy_esm: output written to ' // trim(output_file)
  end if
  call par_finalize()

contains

  !> Coordinates of the whole fine grid on rank 0, from every rank's block.
  subroutine fine_coords_global()
    real(dp), allocatable :: a(:, :), g(:, :)
    integer :: i
    ! Longitudes: a (nlon_f, nlat_f) field holding each cell's longitude, assembled
    ! like the precipitation; then row 1 / column 1 give the coordinates.
    allocate (a(nlon_f, nlat_f), g(gfine(1), gfine(2)))
    g = 0.0_dp
    do i = 1, nlat_f
      a(:, i) = lon_fine
    end do
    call par_gather_fine(a, fstart, g)
    lon_out = g(:, 1)
    do i = 1, nlon_f
      a(i, :) = lat_fine
    end do
    call par_gather_fine(a, fstart, g)
    lat_out = g(1, :)
  end subroutine fine_coords_global

  !> Which model field answers a name the bundle asks for (0: none).
  integer function field_for(name)
    character(len=*), intent(in) :: name
    select case (trim(lower(name)))
    case ('u10', 'uas', '10u', 'eastward_wind')
      field_for = 1
    case ('v10', 'vas', '10v', 'northward_wind')
      field_for = 2
    case ('msl', 'psl', 'slp', 'mslp', 'air_pressure_at_mean_sea_level')
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
  !> (Plugin errors are agreed over all ranks by precipdiff_mpi: every rank stops.)
  subroutine check_plugin(what)
    character(len=*), intent(in) :: what
    if (errflg /= 0) then
      if (root) then
        write (*, '(a,i0,a)') 'toy_esm: ' // what // ' failed (errflg = ', errflg, '):'
        write (*, '(a)') '  ' // trim(errmsg)
      end if
      call fail(what // ' failed')
    end if
  end subroutine check_plugin

  !> The host model (not the library) decides to stop. One process: finalize the
  !> plugin, close the output and exit with status 1. Several: MPI_Abort (a
  !> collective finalize could wait forever for a rank that did not fail).
  subroutine fail(message)
    character(len=*), intent(in) :: message
    character(len=PD_ERRMSG_LEN) :: msg2
    integer :: flg2
    write (*, '(a,i0,a)') 'toy_esm: error (rank ', my_rank, '): ' // message
    if (n_ranks == 1) then
      if (handle /= PD_NO_HANDLE) call plug_finalize(handle, msg2, flg2)
      if (root) call output_close(out, msg2, flg2)
    end if
    call par_abort()
  end subroutine fail

end program toy_esm

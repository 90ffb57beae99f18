!> speedy_precipdiff: the SPEEDY atmospheric GCM coupled online to precipdiff.
!>
!> SPEEDY (speedy.f90 by Sam Hatfield, Fred Kucharski and Franco Molteni;
!> Copyright (c) 2020 Fred Kucharski, Franco Molteni, Sam Hatfield; MIT licence; see
!> LICENSE in its source directory; Molteni 2003, Kucharski et al. 2006, 2013) is built
!> from SPEEDY_SOURCE_DIR by examples/speedy/CMakeLists.txt. This program replaces its
!> ~50-line main program (source/speedy.f90) and runs its modules unchanged, step for step
!> as that main program does, adding:
!>
!>   - the precipdiff coupling through the public Fortran API (module precipdiff): every
!>     timestep humidity and winds (and temperature when a bundle asks for it) on the 8
!>     sigma levels with the pressure of every layer (precipdiff interpolates in ln p),
!>     and sea-level pressure; when a day closes, precipdiff's precipitation of that day on
!>     the model grid;
!>   - mode = 'off' (SPEEDY alone), 'diagnostic' (one-way: precipdiff's field is written
!>     next to SPEEDY's own convective + large-scale precipitation, the model is not
!>     touched) or 'interactive' (two-way: precipdiff's precipitation replaces SPEEDY's as
!>     the daily column moisture sink, latent heating made consistent; speedy_water.F90);
!>   - the daily global water budget (column water change = evaporation - precipitation,
!>     closed by a global fixer whose size is reported) and stability diagnostics;
!>   - daily-mean CF netCDF output (maps and global series; speedy_output.F90);
!>   - restarts of SPEEDY's state (speedy_restart.F90) and of precipdiff's
!>     (precipdiff_write_restart / precipdiff_read_restart);
!>   - prescribed SST changes for experiments: a uniform offset over open sea and an
!>     "ESM-like" bias pattern.
!>
!> Usage: speedy_precipdiff [NAMELIST] [key=value ...]
!>   NAMELIST holds &speedy_precipdiff_nml (default speedy_precipdiff.nml) and, unless
!>   precipdiff_namelist names another file, &precipdiff_nml. key=value overrides a
!>   &speedy_precipdiff_nml entry. Run in a directory holding SPEEDY's boundary files
!>   (surface.nc, sea_surface_temperature.nc, sea_ice.nc, land.nc, snow.nc, soil.nc, or
!>   links to them); the program writes SPEEDY's own namelist.nml there (start date).
program speedy_precipdiff
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use types, only: p
  use params, only: ix, il, kx, nsteps, delt, nstrad
  use date, only: newdate
  use shortwave_radiation, only: compute_shortwave
  use coupler, only: couple_sea_land
  use initialization, only: initialize
  use time_stepping, only: step
  use forcing, only: set_forcing
  use auxiliaries, only: precnv, precls, evap
  use sea_model, only: sst_anomaly_coupling_flag, sst_am, sice_am
  use land_model, only: stl_am, fmask_l
  use boundaries, only: fmask
  use precipdiff, only: precipdiff_init, precipdiff_set_field, precipdiff_run, precipdiff_shapes, &
       precipdiff_required_fields, precipdiff_write_restart, precipdiff_read_restart, &
       precipdiff_finalize, pd_int_str, PD_NO_HANDLE, PD_ERRMSG_LEN
  use speedy_grid
  use speedy_water
  use speedy_output
  use speedy_restart
  implicit none

  ! ---- &speedy_precipdiff_nml ---------------------------------------------------------
  character(len=16) :: mode = 'diagnostic'        ! 'off', 'diagnostic' or 'interactive'
  integer :: ndays = 10                           ! days to simulate in this run
  character(len=10) :: start_date = '1981-01-01'  ! cold-start date (YYYY-MM-DD, 00 UTC)
  character(len=10) :: reference_date = '1981-01-01'  ! model time 0 of precipdiff and of the output
  character(len=512) :: output_file = 'speedy_out.nc'  ! daily output ('' = none)
  character(len=512) :: restart_in = ''           ! continue from this SPEEDY restart ('' = cold start)
  character(len=512) :: restart_out = ''          ! write a SPEEDY restart here at the end ('' = none)
  character(len=512) :: precipdiff_namelist = ''  ! file with &precipdiff_nml ('' = this file)
  character(len=512) :: precipdiff_restart_in = ''   ! precipdiff restart to read ('' = none)
  character(len=512) :: precipdiff_restart_out = ''  ! precipdiff restart to write ('' = none)
  logical :: water_fixer = .true.                 ! close the global water budget every day
  real(p) :: max_removal = 0.5_p                  ! interactive: largest fraction of a column's water removed per day
  logical :: latent_heating = .true.              ! interactive: make the latent heating consistent
  real(p) :: condensate_timescale_days = 1.0_p    ! interactive: re-evaporation time of the column condensate (0: at once)
  real(p) :: condensate_max = 2.0_p               ! interactive: column condensate above this (kg m-2) falls at once
  real(p) :: sst_offset_k = 0.0_p                 ! uniform SST change over open sea (K), e.g. +2, +4
  character(len=16) :: sst_bias = 'none'          ! 'none' or 'esm_like' (bias pattern, see sst_pattern)
  real(p) :: sst_bias_scale = 1.0_p               ! multiplies the bias pattern
  logical :: verbose = .true.                     ! one budget line per day on stdout
  namelist /speedy_precipdiff_nml/ mode, ndays, start_date, reference_date, output_file, &
       restart_in, restart_out, precipdiff_namelist, precipdiff_restart_in, precipdiff_restart_out, &
       water_fixer, max_removal, latent_heating, condensate_timescale_days, condensate_max, sst_offset_k, &
       sst_bias, sst_bias_scale, verbose

  real(p), parameter :: day_s = 86400.0_p
  type(grid_state_t), allocatable :: gs
  type(output_t) :: out
  type(adjustment_t) :: adj
  real(p), allocatable :: acc_pr(:, :), acc_prc(:, :), acc_evap(:, :), acc_ps(:, :), acc_psl(:, :)
  real(p), allocatable :: acc_hus(:, :), acc_ua(:, :), acc_va(:, :), acc_ta(:, :), acc_ts(:, :)
  real(p), allocatable :: acc_tas(:, :), pr_eff(:, :), pr_lim(:, :), pr_model(:, :), pr_fine(:, :)
  real(p), allocatable :: wcol(:, :), dsst(:, :), zero2(:, :), cond(:, :), pr_ovf(:, :)
  character(len=32) :: required(16)
  logical :: need3d(4), need_psl, use_plugin, interactive, need_grid, ready, got_day
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: nml_file, arg
  character(len=700) :: nml_line
  character(len=2048) :: history
  integer :: errflg, handle, nreq, k, iarg, ios, unit, iday, istep, day, days_done, model_step
  integer :: nlon_m, nlat_m, nlon_f, nlat_f, rec, nan_count, y, mo, d, h, mi, ref_days
  integer(8) :: c0, c1, clock_rate, clock_run0, clock_day0, clock_plugin
  real(p) :: e_day, p_day, p_eff_day, w_start, w_end, w_raw, fix, residual, t_end, wtmp
  real(p) :: plugin_s, wall_s, decay, c_start, c_end

  handle = PD_NO_HANDLE
  call system_clock(clock_run0, clock_rate)

  ! ---- configuration ------------------------------------------------------------------
  nml_file = 'speedy_precipdiff.nml'
  if (command_argument_count() >= 1) then
    call get_command_argument(1, arg)
    if (index(arg, '=') == 0) nml_file = arg
  end if
  if (basename(nml_file) == 'namelist.nml') call fail('the driver namelist must not be called ' // &
       'namelist.nml: that is SPEEDY''s own file, which this program writes')
  open (newunit=unit, file=trim(nml_file), status='old', action='read', iostat=ios)
  if (ios /= 0) call fail('cannot open namelist file "' // trim(nml_file) // '"')
  read (unit, nml=speedy_precipdiff_nml, iostat=ios)
  if (ios /= 0) then
    call fail('cannot read &speedy_precipdiff_nml from "' // trim(nml_file) // '" (iostat ' // &
         pd_int_str(ios) // '): check that the group exists and every key is known')
  end if
  close (unit)
  do iarg = 1, command_argument_count()
    call get_command_argument(iarg, arg)
    if (index(arg, '=') == 0) cycle
    nml_line = '&speedy_precipdiff_nml ' // trim(arg) // ' /'
    read (nml_line, nml=speedy_precipdiff_nml, iostat=ios)
    if (ios /= 0) call fail('command-line override "' // trim(arg) // &
         '" is not a valid &speedy_precipdiff_nml assignment')
  end do
  select case (trim(mode))
  case ('off', 'diagnostic', 'interactive')
  case default
    call fail('mode = ''' // trim(mode) // ''' is not one of ''off'', ''diagnostic'', ''interactive''')
  end select
  select case (trim(sst_bias))
  case ('none', 'esm_like')
  case default
    call fail('sst_bias = ''' // trim(sst_bias) // ''' is not one of ''none'', ''esm_like''')
  end select
  if (ndays < 1) call fail('ndays must be >= 1')
  if (.not. (max_removal > 0.0_p .and. max_removal <= 1.0_p)) call fail('max_removal must be in (0, 1]')
  if (.not. (condensate_max >= 0.0_p)) call fail('condensate_max must be >= 0 (kg m-2)')
  if (.not. (condensate_timescale_days >= 0.0_p)) call fail('condensate_timescale_days must be >= 0')
  use_plugin = trim(mode) /= 'off'
  interactive = trim(mode) == 'interactive'
  if (len_trim(precipdiff_namelist) == 0) precipdiff_namelist = nml_file
  need_grid = use_plugin .or. len_trim(output_file) > 0
  call parse_date(reference_date, y, mo, d, 'reference_date')
  ref_days = days_from_civil(y, mo, d)

  ! ---- start date: cold start or the restart's date ----------------------------------------
  if (len_trim(restart_in) > 0) then
    call restart_read_header(trim(restart_in), y, mo, d, h, mi, model_step, days_done, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    if (h /= 0 .or. mi /= 0) call fail('restart ' // trim(restart_in) // ' was not written at 00 UTC')
    if (days_from_civil(y, mo, d) - ref_days /= days_done) call fail('restart ' // &
         trim(restart_in) // ': its date and days_done disagree with reference_date = ' // reference_date)
  else
    call parse_date(start_date, y, mo, d, 'start_date')
    days_done = days_from_civil(y, mo, d) - ref_days
    if (days_done < 0) call fail('start_date ' // start_date // ' is before reference_date ' // reference_date)
    model_step = 1
  end if
  call write_speedy_namelist(y, mo, d)

  write (*, '(a)') 'speedy_precipdiff: SPEEDY (speedy.f90, Copyright (c) 2020 Fred Kucharski, ' // &
       'Franco Molteni, Sam Hatfield; MIT licence) coupled to precipdiff'
  write (*, '(a,i0,a,i4.4,a,i2.2,a,i2.2)') 'speedy_precipdiff: mode ' // trim(mode) // ', ', ndays, &
       ' days from ', y, '-', mo, '-', d

  ! ---- SPEEDY ---------------------------------------------------------------------------
  ! The observed SST anomalies are not available: climatological SST (see
  ! shared/clients/README.md). Must be set before initialize.
  sst_anomaly_coupling_flag = 0
  call check_boundary_files()
  call initialize
  call grid_init()
  allocate (dsst(ix, il), cond(ix, il))
  cond = 0.0_p
  call sst_pattern(dsst)
  if (len_trim(restart_in) > 0) then
    call restart_read(trim(restart_in), cond, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    write (*, '(a,i0,a)') 'speedy_precipdiff: restarted from ' // trim(restart_in) // ' (day ', &
         days_done, ' since reference_date)'
  else
    call perturb_sst()   ! the first days' SST (later: after every land/sea coupling)
  end if

  allocate (gs)
  gs%t = 0.0_p
  allocate (acc_pr(ix, il), acc_prc(ix, il), acc_evap(ix, il), acc_ps(ix, il), acc_psl(ix, il), &
            acc_hus(ix, il), acc_ua(ix, il), acc_va(ix, il), acc_ta(ix, il), acc_ts(ix, il), &
            acc_tas(ix, il), pr_eff(ix, il), pr_lim(ix, il), pr_ovf(ix, il), pr_model(ix, il), wcol(ix, il), &
            zero2(ix, il))
  zero2 = 0.0_p
  decay = 1.0_p
  if (condensate_timescale_days > 0.0_p) decay = 1.0_p - exp(-1.0_p / condensate_timescale_days)
  pr_model = 0.0_p
  pr_lim = 0.0_p
  pr_ovf = 0.0_p

  ! ---- precipdiff ------------------------------------------------------------------------
  clock_plugin = 0
  need3d = .false.
  need_psl = .false.
  if (use_plugin) then
    call system_clock(c0)
    call precipdiff_init(handle, trim(precipdiff_namelist), lon_deg, lat_deg, errmsg, errflg)
    call check_plugin('precipdiff_init')
    call precipdiff_shapes(handle, nlon_m, nlat_m, nlon_f, nlat_f, errmsg, errflg)
    call check_plugin('precipdiff_shapes')
    if (nlon_m /= ix .or. nlat_m /= il) call fail('precipdiff reports a model grid other than 96 x 48')
    allocate (pr_fine(nlon_f, nlat_f))
    call precipdiff_required_fields(handle, required, nreq, errmsg, errflg)
    call check_plugin('precipdiff_required_fields')
    if (nreq > size(required)) call fail('the bundle needs more fields than the driver can name')
    do k = 1, nreq
      call classify(required(k))
    end do
    if (len_trim(precipdiff_restart_in) > 0) then
      call precipdiff_read_restart(handle, trim(precipdiff_restart_in), errmsg, errflg)
      call check_plugin('precipdiff_read_restart')
    end if
    call system_clock(c1)
    clock_plugin = clock_plugin + (c1 - c0)
    write (*, '(a,i0,a,i0,a,100(1x,a))') 'speedy_precipdiff: precipdiff ready, fine grid ', nlon_f, &
         ' x ', nlat_f, '; fields:', (trim(required(k)), k = 1, nreq)
  else
    allocate (pr_fine(0, 0))
  end if

  ! ---- output -------------------------------------------------------------------------------
  rec = 0
  if (len_trim(output_file) > 0) call open_output()

  call level_water(2, wcol, w_start)
  if (verbose) then
    write (*, '(a)') 'speedy_precipdiff:  day       prw      evap    precip   pr_pd   limited  overflow' // &
         '  condensate   pr_speedy      fixer     residual  latent_err   t_sfc  nan  wall_s plugin_s'
    write (*, '(a)') 'speedy_precipdiff:           kg/m2    mm/day    mm/day  mm/day    mm/day    mm/day' // &
         '       kg/m2      mm/day      kg/m2        kg/m2       W/m2        K'
  end if

  ! ---- time loop: SPEEDY's main program, day by day -------------------------------------------
  do iday = 1, ndays
    day = days_done + iday
    call system_clock(clock_day0)
    c0 = clock_plugin
    acc_pr = 0.0_p
    acc_prc = 0.0_p
    acc_evap = 0.0_p
    acc_ps = 0.0_p
    acc_psl = 0.0_p
    acc_hus = 0.0_p
    acc_ua = 0.0_p
    acc_va = 0.0_p
    acc_ta = 0.0_p
    acc_ts = 0.0_p
    acc_tas = 0.0_p
    e_day = 0.0_p
    p_day = 0.0_p
    got_day = .false.
    do istep = 1, nsteps
      ! As in SPEEDY's source/speedy.f90:
      if (mod(model_step - 1, nsteps) == 0) call set_forcing(1)
      compute_shortwave = mod(model_step, nstrad) == 1
      call step(2, 2, 2 * delt)
      model_step = model_step + 1
      call newdate
      call couple_sea_land(1 + model_step / nsteps)
      call perturb_sst()

      ! Fluxes of this step's physics (g m-2 s-1 -> kg m-2 s-1).
      acc_pr = acc_pr + 1.0e-3_p * (precnv + precls) / nsteps
      acc_prc = acc_prc + 1.0e-3_p * precnv / nsteps
      acc_evap = acc_evap + 1.0e-3_p * evap(:, :, 3) / nsteps
      e_day = e_day + 1.0e-3_p * global_mean(evap(:, :, 3)) * delt
      p_day = p_day + 1.0e-3_p * global_mean(precnv + precls) * delt
      acc_ts = acc_ts + (fmask_l * stl_am + (1.0_p - fmask_l) * sst_am) / nsteps

      if (.not. need_grid) cycle
      ! The state at the end of the step (the newest leapfrog level).
      call get_grid_state(2, gs, len_trim(output_file) > 0 .or. need3d(4))
      ! A model that blew up is the host's failure: say so here, with the date, rather
      ! than hand precipdiff pressures it must refuse (non-finite, not monotonic).
      nan_count = count(.not. (gs%ps > 0.0_p .and. ieee_is_finite(gs%ps))) + &
                  count(.not. ieee_is_finite(gs%t)) + count(.not. ieee_is_finite(gs%q))
      if (nan_count > 0) call fail('SPEEDY''s state blew up: ' // pd_int_str(nan_count) // &
           ' non-finite or non-positive values of surface pressure, temperature or humidity ' // &
           'at the end of step ' // pd_int_str(istep) // ' of day ' // pd_int_str(day) // &
           ' (model date ' // date_text() // '), before precipdiff was called')
      acc_ps = acc_ps + gs%ps / nsteps
      acc_psl = acc_psl + gs%psl / nsteps
      acc_tas = acc_tas + gs%t(:, :, kx) / nsteps
      if (len_trim(output_file) > 0) then
        acc_hus = acc_hus + interp_log_pressure(gs%qpos, gs%pfull, 85000.0_p) / nsteps
        acc_ua = acc_ua + interp_log_pressure(gs%u, gs%pfull, 85000.0_p) / nsteps
        acc_va = acc_va + interp_log_pressure(gs%v, gs%pfull, 85000.0_p) / nsteps
        acc_ta = acc_ta + interp_log_pressure(gs%t, gs%pfull, 85000.0_p) / nsteps
      end if

      if (use_plugin) then
        call system_clock(c1)
        if (need3d(1)) call precipdiff_set_field(handle, 'hus', gs%qpos, gs%pfull, errmsg, errflg)
        call check_plugin('precipdiff_set_field(hus)')
        if (need3d(2)) call precipdiff_set_field(handle, 'ua', gs%u, gs%pfull, errmsg, errflg)
        call check_plugin('precipdiff_set_field(ua)')
        if (need3d(3)) call precipdiff_set_field(handle, 'va', gs%v, gs%pfull, errmsg, errflg)
        call check_plugin('precipdiff_set_field(va)')
        if (need3d(4)) call precipdiff_set_field(handle, 'ta', gs%t, gs%pfull, errmsg, errflg)
        call check_plugin('precipdiff_set_field(ta)')
        if (need_psl) call precipdiff_set_field(handle, 'psl', gs%psl, errmsg, errflg)
        call check_plugin('precipdiff_set_field(psl)')
        ! model_time: the END of this step, seconds since reference_date.
        t_end = (real(day - 1, p) * nsteps + istep) * delt
        call precipdiff_run(handle, t_end, real(delt, p), pr_fine, pr_model, ready, errmsg, errflg)
        call check_plugin('precipdiff_run')
        clock_plugin = clock_plugin + (system_clock_now() - c1)
        if (ready .and. istep /= nsteps) then
          call fail('precipdiff closed its window at step ' // pd_int_str(istep) // ' of day ' // &
               pd_int_str(day) // ', not at the end of the day: window_s in &precipdiff_nml must ' // &
               'be 86400 and reference_time must be the driver''s reference_date at 00:00:00')
        end if
        if (ready) got_day = .true.
      end if
    end do

    ! ---- end of the day: coupling, budget, output ----------------------------------------------
    nan_count = count(.not. ieee_is_finite(acc_pr)) + count(.not. ieee_is_finite(acc_evap))
    if (use_plugin) nan_count = nan_count + count(.not. ieee_is_finite(pr_model))
    if (nan_count > 0) call fail_day('non-finite precipitation or evaporation')
    pr_eff = acc_pr
    pr_lim = 0.0_p
    pr_ovf = 0.0_p
    adj = adjustment_t()
    p_eff_day = p_day
    c_start = global_mean(cond)
    if (interactive) then
      if (.not. got_day) call fail('interactive mode: precipdiff returned no precipitation at the ' // &
           'end of the day; interactive coupling needs inference = ''sync'' and window_s = 86400')
      call column_adjustment(acc_pr, max(pr_model, 0.0_p), max_removal, decay, condensate_max, &
                             latent_heating, cond, pr_eff, pr_lim, pr_ovf, adj)
      ! The precipitation that left the columns, on the same footing as p_day.
      p_eff_day = p_day + (adj%removed - global_mean(acc_pr) * day_s)
    end if
    c_end = global_mean(cond)
    ! Column water = vapour + condensate (the condensate is zero unless interactive).
    call level_water(2, wcol, w_raw)
    fix = 0.0_p
    if (water_fixer) call apply_water_fixer(w_start + c_start + e_day - p_eff_day - c_end, fix)
    call level_water(2, wcol, w_end)
    residual = (w_end + c_end - w_start - c_start) - (e_day - p_eff_day)
    nan_count = count(.not. ieee_is_finite(wcol))
    if (need_grid) nan_count = nan_count + count(.not. ieee_is_finite(gs%t(:, :, kx))) + &
                               count(.not. ieee_is_finite(gs%u))
    call system_clock(c1)
    wall_s = real(c1 - clock_day0, p) / clock_rate
    plugin_s = real(clock_plugin - c0, p) / clock_rate
    if (verbose) write (*, '(a,i5,f10.3,3f10.4,2f10.4,f12.4,f12.4,es11.3,es13.3,es12.3,f8.2,i5,2f8.3)') &
         'speedy_precipdiff: ', day, w_end, e_day, p_eff_day, global_mean(pr_model) * day_s, adj%limited, &
         adj%overflow, c_end, p_day, fix, residual, (adj%heat_applied - adj%heat_intended) / day_s, &
         global_mean(acc_ts), nan_count, &
         wall_s, plugin_s
    if (len_trim(output_file) > 0) call write_day()
    if (nan_count > 0) call fail_day('non-finite model state')
    w_start = w_end
  end do

  ! ---- end of the run -------------------------------------------------------------------------
  if (len_trim(restart_out) > 0) then
    call restart_write(trim(restart_out), model_step, days_done + ndays, cond, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    write (*, '(a,i0)') 'speedy_precipdiff: restart written to ' // trim(restart_out) // ' after day ', &
         days_done + ndays
  end if
  if (use_plugin .and. len_trim(precipdiff_restart_out) > 0) then
    call precipdiff_write_restart(handle, trim(precipdiff_restart_out), errmsg, errflg)
    call check_plugin('precipdiff_write_restart')
  end if
  if (len_trim(output_file) > 0) then
    call output_close(out, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
  end if
  if (use_plugin) then
    call precipdiff_finalize(handle, errmsg, errflg)
    call check_plugin('precipdiff_finalize')
  end if
  call system_clock(c1)
  wall_s = real(c1 - clock_run0, p) / clock_rate
  plugin_s = real(clock_plugin, p) / clock_rate
  write (*, '(a,f10.2,a,f9.4,a,f9.4,a)') 'speedy_precipdiff: wall time ', wall_s, ' s, ', &
       wall_s / ndays, ' s per simulated day (precipdiff incl. start-up ', plugin_s / ndays, ' s per day)'

contains

  !> SPEEDY's current model date, YYYY-MM-DD hh:mm.
  function date_text() result(txt)
    use date, only: model_datetime
    character(len=16) :: txt
    txt = pad(model_datetime%year, 4) // '-' // pad(model_datetime%month, 2) // '-' // &
          pad(model_datetime%day, 2) // ' ' // pad(model_datetime%hour, 2) // ':' // &
          pad(model_datetime%minute, 2)
  end function date_text

  !> i with leading zeros to n digits.
  function pad(i, n) result(txt)
    integer, intent(in) :: i, n
    character(len=n) :: txt
    character(len=32) :: d
    d = pd_int_str(i)
    txt = repeat('0', max(0, n - len_trim(d))) // trim(d)
  end function pad

  integer(8) function system_clock_now()
    call system_clock(system_clock_now)
  end function system_clock_now

  !> Which model field answers a name the bundle asks for.
  subroutine classify(name)
    character(len=*), intent(in) :: name
    character(len=32) :: base
    integer :: i
    i = verify(trim(name), 'abcdefghijklmnopqrstuvwxyz_')
    if (trim(name) == 'psl') then
      need_psl = .true.
      return
    end if
    if (i > 1) then
      base = name(1:i - 1)
      if (verify(trim(name(i:)), '0123456789.') == 0) then
        select case (trim(base))
        case ('hus')
          need3d(1) = .true.
          return
        case ('ua')
          need3d(2) = .true.
          return
        case ('va')
          need3d(3) = .true.
          return
        case ('ta')
          need3d(4) = .true.
          return
        end select
      end if
    end if
    call fail('the bundle needs field "' // trim(name) // '"; the SPEEDY driver provides hus, ua, ' // &
         'va and ta on pressure levels (from the sigma levels) and psl')
  end subroutine classify

  !> Uniform offset over open sea plus the optional bias pattern (K).
  subroutine sst_pattern(f)
    real(p), intent(out) :: f(ix, il)
    integer :: i, j
    real(p) :: lat, lon
    f = sst_offset_k
    if (trim(sst_bias) == 'esm_like') then
      ! Typical coupled-model SST errors, idealised: a too-cold equatorial Pacific cold
      ! tongue extending too far west, a too-warm Southern Ocean and too-warm eastern
      ! boundary upwelling regions (south-east Pacific and Atlantic).
      do j = 1, il
        lat = lat_deg(j)
        do i = 1, ix
          lon = lon_deg(i)
          f(i, j) = f(i, j) + sst_bias_scale * ( &
               - 2.0_p * exp(-(lat / 6.0_p)**2) * exp(-((lon - 220.0_p) / 45.0_p)**2) &
               + 2.0_p * exp(-((lat + 52.0_p) / 10.0_p)**2) &
               + 1.5_p * exp(-((lat + 18.0_p) / 8.0_p)**2) * exp(-((lon - 275.0_p) / 12.0_p)**2) &
               + 1.5_p * exp(-((lat + 15.0_p) / 8.0_p)**2) * exp(-((lon - 8.0_p) / 10.0_p)**2))
        end do
      end do
    end if
  end subroutine sst_pattern

  logical function sst_changed()
    sst_changed = abs(sst_offset_k) > 0.0_p .or. trim(sst_bias) /= 'none'
  end function sst_changed

  !> Apply the SST change to the open-sea part of SPEEDY's surface temperature (after
  !> each land/sea coupling, which recomputes sst_am from climatology).
  subroutine perturb_sst()
    if (.not. sst_changed()) return
    where (fmask < 1.0_p) sst_am = sst_am + dsst * (1.0_p - sice_am)
  end subroutine perturb_sst

  subroutine open_output()
    character(len=16) :: m
    history = 'speedy_precipdiff mode=' // trim(mode) // ' namelist=' // trim(nml_file)
    if (sst_changed()) then
      write (m, '(f6.2)') sst_offset_k
      history = trim(history) // ' sst_offset_k=' // trim(adjustl(m)) // ' sst_bias=' // trim(sst_bias)
    end if
    call output_create(out, trim(output_file), lon_deg, lat_deg, lat_edges, reference_date // &
         ' 00:00:00', 'SPEEDY coupled to precipdiff: daily means', trim(history), errmsg, errflg)
    call ochk()
    call map('pr', 'precipitation that left the atmosphere (SPEEDY''s, or precipdiff''s in ' // &
         'interactive mode)', 'kg m-2 s-1', 'precipitation_flux')
    call map('pr_speedy', 'SPEEDY convective + large-scale precipitation', 'kg m-2 s-1', &
         'precipitation_flux')
    call map('prc', 'SPEEDY convective precipitation', 'kg m-2 s-1', 'convective_precipitation_flux')
    if (use_plugin) call map('pr_precipdiff', 'precipdiff precipitation on the model grid', &
         'kg m-2 s-1', 'precipitation_flux')
    if (interactive) call map('pr_limited', 'precipdiff precipitation not removed (column limit)', &
         'kg m-2 s-1', '')
    if (interactive) call map('pr_overflow', 'SPEEDY condensate above condensate_max that fell ' // &
         '(part of pr)', 'kg m-2 s-1', '')
    if (interactive) call map('condensate', 'column condensate reservoir at the end of the day', &
         'kg m-2', '')
    call map('evspsbl', 'evaporation', 'kg m-2 s-1', 'water_evapotranspiration_flux')
    call map('prw', 'column water vapour at the end of the day', 'kg m-2', 'atmosphere_mass_content_of_water_vapor')
    call map('ps', 'surface pressure', 'Pa', 'surface_air_pressure')
    call map('psl', 'sea-level pressure', 'Pa', 'air_pressure_at_mean_sea_level')
    call map('hus850', 'specific humidity at 850 hPa (ln-p interpolation of the sigma levels)', &
         'kg kg-1', 'specific_humidity')
    call map('ua850', 'eastward wind at 850 hPa', 'm s-1', 'eastward_wind')
    call map('va850', 'northward wind at 850 hPa', 'm s-1', 'northward_wind')
    call map('ta850', 'air temperature at 850 hPa', 'K', 'air_temperature')
    call map('ts', 'surface temperature (land model, prescribed SST)', 'K', 'surface_temperature')
    call map('tas', 'air temperature of the lowest model level (sigma = 0.95)', 'K', 'air_temperature')
    call series('global_prw', 'global mean column water vapour at the end of the day', 'kg m-2')
    call series('global_condensate', 'global mean column condensate at the end of the day', 'kg m-2')
    call series('global_evap', 'global mean evaporation', 'kg m-2 day-1')
    call series('global_pr', 'global mean precipitation that left the atmosphere', 'kg m-2 day-1')
    call series('global_pr_speedy', 'global mean SPEEDY precipitation', 'kg m-2 day-1')
    call series('global_pr_precipdiff', 'global mean precipdiff precipitation', 'kg m-2 day-1')
    call series('global_pr_limited', 'global mean precipdiff precipitation not removed', 'kg m-2 day-1')
    call series('global_pr_overflow', 'global mean condensate above condensate_max that fell', 'kg m-2 day-1')
    call series('water_fixer', 'global water added by the fixer', 'kg m-2 day-1')
    call series('budget_residual', 'change of prw + condensate minus (evaporation - precipitation)', &
         'kg m-2 day-1')
    call series('adjustment_water_intended', 'interactive column adjustment on the grid', 'kg m-2 day-1')
    call series('adjustment_water_applied', 'the same after spectral truncation', 'kg m-2 day-1')
    call series('latent_heat_intended', 'interactive latent-heat correction on the grid', 'W m-2')
    call series('latent_heat_applied', 'the same after spectral truncation', 'W m-2')
    call series('global_ts', 'global mean surface temperature', 'K')
    call series('global_tas', 'global mean air temperature of the lowest level', 'K')
    call series('nan_count', 'non-finite values found this day', '1')
    call series('wall_s', 'wall time of the day', 's')
    call series('plugin_s', 'wall time of the day spent in precipdiff calls', 's')
    call output_enddef(out, errmsg, errflg)
    call ochk()
  end subroutine open_output

  subroutine write_day()
    rec = rec + 1
    call output_put_time(out, rec, real(day - 1, p), real(day, p), errmsg, errflg)
    call ochk()
    call put('pr', pr_eff)
    call put('pr_speedy', acc_pr)
    call put('prc', acc_prc)
    if (use_plugin) call put('pr_precipdiff', pr_model)
    if (interactive) call put('pr_limited', pr_lim)
    if (interactive) call put('pr_overflow', pr_ovf)
    if (interactive) call put('condensate', cond)
    call put('evspsbl', acc_evap)
    call put('prw', wcol)
    call put('ps', acc_ps)
    call put('psl', acc_psl)
    call put('hus850', acc_hus)
    call put('ua850', acc_ua)
    call put('va850', acc_va)
    call put('ta850', acc_ta)
    call put('ts', acc_ts)
    call put('tas', acc_tas)
    call put_s('global_prw', w_end)
    call put_s('global_condensate', c_end)
    call put_s('global_evap', e_day)
    call put_s('global_pr', p_eff_day)
    call put_s('global_pr_speedy', p_day)
    wtmp = 0.0_p
    if (use_plugin) wtmp = global_mean(pr_model) * day_s
    call put_s('global_pr_precipdiff', wtmp)
    call put_s('global_pr_limited', adj%limited)
    call put_s('global_pr_overflow', adj%overflow)
    call put_s('water_fixer', fix)
    call put_s('budget_residual', residual)
    call put_s('adjustment_water_intended', adj%water_intended)
    call put_s('adjustment_water_applied', adj%water_applied)
    call put_s('latent_heat_intended', adj%heat_intended / day_s)
    call put_s('latent_heat_applied', adj%heat_applied / day_s)
    call put_s('global_ts', global_mean(acc_ts))
    call put_s('global_tas', global_mean(acc_tas))
    call put_s('nan_count', real(nan_count, p))
    call put_s('wall_s', wall_s)
    call put_s('plugin_s', plugin_s)
  end subroutine write_day

  subroutine map(name, long_name, units, standard_name)
    character(len=*), intent(in) :: name, long_name, units, standard_name
    call output_add_map(out, name, long_name, units, standard_name, errmsg, errflg)
    call ochk()
  end subroutine map

  subroutine series(name, long_name, units)
    character(len=*), intent(in) :: name, long_name, units
    call output_add_series(out, name, long_name, units, errmsg, errflg)
    call ochk()
  end subroutine series

  subroutine put(name, f)
    character(len=*), intent(in) :: name
    real(p), intent(in) :: f(ix, il)
    call output_put_map(out, name, rec, f, errmsg, errflg)
    call ochk()
  end subroutine put

  subroutine put_s(name, v)
    character(len=*), intent(in) :: name
    real(p), intent(in) :: v
    call output_put_series(out, name, rec, v, errmsg, errflg)
    call ochk()
  end subroutine put_s

  subroutine ochk()
    if (errflg /= 0) call fail(trim(errmsg))
  end subroutine ochk

  !> SPEEDY reads its start date from ./namelist.nml.
  subroutine write_speedy_namelist(year, month, dday)
    integer, intent(in) :: year, month, dday
    integer :: u
    open (newunit=u, file='namelist.nml', status='replace', action='write', iostat=ios)
    if (ios /= 0) call fail('cannot write SPEEDY''s namelist.nml in the run directory')
    write (u, '(a)') '! written by speedy_precipdiff: the start date of this run segment'
    write (u, '(a)') '&params'
    write (u, '(a)') 'nsteps_out = 99999'
    write (u, '(a)') 'nstdia = 99999'
    write (u, '(a)') '/'
    write (u, '(a)') '&date'
    write (u, '(a,i0)') 'start_datetime%year = ', year
    write (u, '(a,i0)') 'start_datetime%month = ', month
    write (u, '(a,i0)') 'start_datetime%day = ', dday
    write (u, '(a)') 'start_datetime%hour = 0'
    write (u, '(a)') 'start_datetime%minute = 0'
    write (u, '(a,i0)') 'end_datetime%year = ', year
    write (u, '(a,i0)') 'end_datetime%month = ', month
    write (u, '(a,i0)') 'end_datetime%day = ', dday
    write (u, '(a)') 'end_datetime%hour = 0'
    write (u, '(a)') 'end_datetime%minute = 0'
    write (u, '(a)') '/'
    close (u)
  end subroutine write_speedy_namelist

  !> SPEEDY stops without a message of ours when a boundary file is missing: check first.
  subroutine check_boundary_files()
    character(len=32), parameter :: files(6) = [character(len=32) :: 'surface.nc', &
         'sea_surface_temperature.nc', 'sea_ice.nc', 'land.nc', 'snow.nc', 'soil.nc']
    logical :: there
    integer :: i
    do i = 1, size(files)
      inquire (file=trim(files(i)), exist=there)
      if (.not. there) call fail('SPEEDY boundary file ' // trim(files(i)) // ' is not in the run ' // &
           'directory: link the files of <speedy.f90>/data/bc/t30/clim there (examples/speedy/run_speedy.py does)')
    end do
  end subroutine check_boundary_files

  subroutine parse_date(text, year, month, dday, what)
    character(len=*), intent(in) :: text, what
    integer, intent(out) :: year, month, dday
    integer :: ierr
    read (text, '(i4,1x,i2,1x,i2)', iostat=ierr) year, month, dday
    if (ierr /= 0 .or. text(5:5) /= '-' .or. text(8:8) /= '-') &
      call fail(what // ' = ''' // trim(text) // ''' is not a date YYYY-MM-DD')
    ! SPEEDY's calendar has a leap day every 4 years, the Gregorian one only in 1901-2099.
    if (year < 1901 .or. year > 2099 .or. month < 1 .or. month > 12 .or. dday < 1 .or. dday > 31) &
      call fail(what // ' = ''' // trim(text) // ''' must be a date in 1901-2099 (SPEEDY''s leap ' // &
                'years are those of the standard calendar only there)')
  end subroutine parse_date

  !> Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
  pure integer function days_from_civil(year, month, dday)
    integer, intent(in) :: year, month, dday
    integer :: yy, era, yoe, doy, doe
    yy = year
    if (month <= 2) yy = yy - 1
    era = yy / 400
    yoe = yy - era * 400
    doy = (153 * (month + merge(-3, 9, month > 2)) + 2) / 5 + dday - 1
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    days_from_civil = era * 146097 + doe - 719468
  end function days_from_civil

  pure function basename(path) result(b)
    character(len=*), intent(in) :: path
    character(len=len(path)) :: b
    integer :: i
    i = index(path, '/', back=.true.)
    b = path(i + 1:)
  end function basename

  subroutine check_plugin(what)
    character(len=*), intent(in) :: what
    if (errflg /= 0) then
      write (*, '(a,i0,a)') 'speedy_precipdiff: ' // what // ' failed (errflg = ', errflg, '):'
      write (*, '(a)') '  ' // trim(errmsg)
      call fail(what // ' failed')
    end if
  end subroutine check_plugin

  subroutine fail_day(what)
    character(len=*), intent(in) :: what
    call fail(what // ' on day ' // pd_int_str(day) // ': ' // pd_int_str(nan_count))
  end subroutine fail_day

  !> The host model, not the library, decides to stop: finalize the plugin, close the
  !> output (what was written stays readable) and exit with status 1.
  subroutine fail(message)
    character(len=*), intent(in) :: message
    character(len=PD_ERRMSG_LEN) :: msg2
    integer :: flg2
    write (*, '(a)') 'speedy_precipdiff: error: ' // message
    if (handle /= PD_NO_HANDLE) call precipdiff_finalize(handle, msg2, flg2)
    if (out%ncid >= 0) call output_close(out, msg2, flg2)
    error stop 1
  end subroutine fail

end program speedy_precipdiff

!> offline_replay: drive the precipdiff plugin with real ESM output, as an ESM would.
!>
!> Reads the daily CNRM-CM5 fields (climate4R Iberia data set: hus850, psl,
!> ta850, ... on the model's ~1.4 degree grid) with netCDF-Fortran, steps through
!> them at sub-daily timesteps (each day's values are held for its nsteps
!> timesteps, so the plugin's daily mean equals the file's daily value), calls
!> the plugin every timestep exactly like an online coupling would, and writes
!> the generated precipitation (fine grid and ESM grid) next to the ESM's own
!> precipitation as CF netCDF. plot_offline_replay.py compares them with E-OBS.
!>
!> Usage:  offline_replay [NAMELIST] [key=value ...]
!>   NAMELIST  file with &offline_replay_nml (default offline_replay.nml); the
!>             plugin reads &precipdiff_nml from precipdiff_namelist (default: same file).
!>   key=value overrides an &offline_replay_nml entry, e.g. ndays=5 start_record=31.
program offline_replay
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use replay_io
  use precipdiff, only: precipdiff_init, precipdiff_run, precipdiff_set_field, &
       precipdiff_finalize, precipdiff_shapes, precipdiff_fine_coords, &
       precipdiff_required_fields, PD_NO_HANDLE, PD_ERRMSG_LEN
  implicit none

  ! ---- &offline_replay_nml -----------------------------------------------------------
  character(len=512) :: data_dir = '../shared/data/climate4r_iberia'  ! directory of the daily files
  character(len=64) :: file_prefix = 'CMIP5_Iberia_'   ! file of field X: data_dir/file_prefix//X//'.nc'
  character(len=64) :: esm_precip = 'pr'               ! the ESM's own precipitation file suffix
  integer :: start_record = 1                          ! first daily record replayed (1-based)
  integer :: ndays = 90                                ! days replayed (must be consecutive days)
  real(dp) :: dt = 21600.0_dp                          ! ESM timestep (s); must divide a day
  integer :: i_first = 1, i_last = 0                   ! longitude index window handed to the plugin (0: last)
  integer :: j_first = 1, j_last = 0                   ! latitude index window handed to the plugin (0: last)
  character(len=512) :: output_file = 'offline_replay_out.nc'
  character(len=512) :: precipdiff_namelist = ''       ! file with &precipdiff_nml ('' = this file)
  namelist /offline_replay_nml/ data_dir, file_prefix, esm_precip, start_record, ndays, dt, &
       i_first, i_last, j_first, j_last, output_file, precipdiff_namelist

  type(daily_file_t) :: prfile
  type(daily_file_t), allocatable :: files(:)
  type(replay_output_t) :: out
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: nml_file, arg
  character(len=600) :: nml_line
  character(len=32) :: required(16)
  real(dp), allocatable :: full(:, :), fields(:, :, :), pr_esm(:, :), pr_model(:, :), pr_fine(:, :)
  real(dp), allocatable :: lon_fine(:), lat_fine(:), lon(:), lat(:)
  integer :: errflg, handle, nreq, k, day, rec, step, nsteps, nw_lon, nw_lat, nlon_p, nlat_p
  integer :: nlon_f, nlat_f, iarg, ios, unit, nbad
  integer(8) :: c0, c1, cday, rate
  real(dp) :: t_end, day_start
  logical :: ready, got

  handle = PD_NO_HANDLE

  ! ---- configuration ------------------------------------------------------------------
  nml_file = 'offline_replay.nml'
  if (command_argument_count() >= 1) then
    call get_command_argument(1, nml_file)
    if (index(nml_file, '=') > 0) nml_file = 'offline_replay.nml'
  end if
  open (newunit=unit, file=trim(nml_file), status='old', action='read', iostat=ios)
  if (ios /= 0) call fail('cannot open namelist file "' // trim(nml_file) // '"')
  read (unit, nml=offline_replay_nml, iostat=ios)
  if (ios /= 0) call fail('cannot read &offline_replay_nml from "' // trim(nml_file) // &
       '": check the group exists and every key is known')
  close (unit)
  do iarg = 1, command_argument_count()
    call get_command_argument(iarg, arg)
    if (index(arg, '=') == 0) cycle
    nml_line = '&offline_replay_nml ' // trim(arg) // ' /'
    read (nml_line, nml=offline_replay_nml, iostat=ios)
    if (ios /= 0) call fail('command-line override "' // trim(arg) // &
         '" is not a valid &offline_replay_nml assignment')
  end do
  if (len_trim(precipdiff_namelist) == 0) precipdiff_namelist = nml_file
  if (ndays < 1) call fail('ndays must be >= 1')
  if (dt <= 0.0_dp .or. abs(86400.0_dp / dt - nint(86400.0_dp / dt)) > 1.0e-9_dp) &
       call fail('dt must be positive and divide a day (86400 s)')
  nsteps = nint(86400.0_dp / dt)

  ! ---- the ESM grid, from its own precipitation file --------------------------------------
  call daily_open(prfile, trim(data_dir) // '/' // trim(file_prefix) // trim(esm_precip) // '.nc', &
                  errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))
  if (i_last == 0) i_last = prfile%nlon
  if (j_last == 0) j_last = prfile%nlat
  if (i_first < 1 .or. i_last > prfile%nlon .or. i_first > i_last .or. &
      j_first < 1 .or. j_last > prfile%nlat .or. j_first > j_last) then
    write (errmsg, '(a,4(i0,a),i0,a,i0)') 'grid window i=', i_first, '..', i_last, ', j=', j_first, &
         '..', j_last, ' is not inside the ESM grid 1..', prfile%nlon, ' x 1..', prfile%nlat
    call fail(trim(errmsg))
  end if
  if (start_record < 1 .or. start_record + ndays - 1 > prfile%ntime) then
    write (errmsg, '(a,i0,a,i0,a,i0,a)') 'records ', start_record, '..', start_record + ndays - 1, &
         ' are outside the file''s 1..', prfile%ntime, ''
    call fail(trim(errmsg))
  end if
  do rec = start_record + 1, start_record + ndays - 1
    if (abs(prfile%time(rec) - prfile%time(rec - 1) - 1.0_dp) > 1.0e-6_dp) then
      write (errmsg, '(a,i0,a,i0,a)') 'records ', rec - 1, ' and ', rec, &
           ' are not consecutive days (the data set holds winters only): replay one winter at a time'
      call fail(trim(errmsg))
    end if
  end do
  nw_lon = i_last - i_first + 1
  nw_lat = j_last - j_first + 1
  allocate (lon(nw_lon), lat(nw_lat))
  lon = prfile%lon(i_first:i_last)
  lat = prfile%lat(j_first:j_last)
  write (*, '(a)') 'offline_replay: ESM ' // trim(file_prefix) // ' fields from ' // trim(data_dir)
  write (*, '(a,i0,a,i0,a,f6.2,a,f6.2,a,f7.2,a,f7.2,a)') 'offline_replay: grid handed to the plugin ', &
       nw_lon, ' x ', nw_lat, ' (lat ', lat(1), '..', lat(nw_lat), ', lon ', lon(1), '..', lon(nw_lon), ')'
  write (*, '(a,i0,a,f7.0,a,i0,a)') 'offline_replay: ', ndays, ' days, dt = ', dt, ' s (', nsteps, &
       ' steps per day)'

  ! ---- plugin ---------------------------------------------------------------------------
  call system_clock(c0, rate)
  call precipdiff_init(handle, trim(precipdiff_namelist), lon, lat, errmsg, errflg)
  call check_plugin('precipdiff_init')
  call precipdiff_shapes(handle, nlon_p, nlat_p, nlon_f, nlat_f, errmsg, errflg)
  call check_plugin('precipdiff_shapes')
  if (nlon_p /= nw_lon .or. nlat_p /= nw_lat) call fail('plugin reports a model grid shape different from ours')
  allocate (lon_fine(nlon_f), lat_fine(nlat_f), pr_fine(nlon_f, nlat_f), pr_model(nw_lon, nw_lat))
  call precipdiff_fine_coords(handle, lon_fine, lat_fine, errmsg, errflg)
  call check_plugin('precipdiff_fine_coords')
  call precipdiff_required_fields(handle, required, nreq, errmsg, errflg)
  call check_plugin('precipdiff_required_fields')
  if (nreq > size(required)) call fail('the bundle needs more fields than offline_replay can hold')
  call system_clock(c1)
  write (*, '(a,i0,a,i0,a,f6.1,a,100(1x,a))') 'offline_replay: plugin ready (fine grid ', nlon_f, ' x ', &
       nlat_f, ', ', real(c1 - c0, dp) / rate, ' s), fields:', (trim(required(k)), k = 1, nreq)

  ! One input file per required field, on the same grid and time axis as pr.
  allocate (files(nreq))
  do k = 1, nreq
    call daily_open(files(k), trim(data_dir) // '/' // trim(file_prefix) // trim(required(k)) // '.nc', &
                    errmsg, errflg)
    if (errflg /= 0) call fail('the bundle needs field ' // trim(required(k)) // ': ' // trim(errmsg))
    if (files(k)%nlon /= prfile%nlon .or. files(k)%nlat /= prfile%nlat .or. &
        files(k)%ntime /= prfile%ntime) call fail(trim(files(k)%path) // ' is not on the grid of ' // &
        trim(prfile%path))
    if (maxval(abs(files(k)%time - prfile%time)) > 1.0e-6_dp) &
         call fail(trim(files(k)%path) // ' has a different time axis from ' // trim(prfile%path))
    write (*, '(a)') 'offline_replay:   ' // trim(required(k)) // ' <- ' // trim(files(k)%path) // &
         ' (' // trim(files(k)%varname) // ', ' // trim(files(k)%units) // ')'
  end do
  allocate (full(prfile%nlon, prfile%nlat), fields(nw_lon, nw_lat, nreq), pr_esm(nw_lon, nw_lat))

  call replay_out_open(out, trim(output_file), lon, lat, lon_fine, lat_fine, trim(prfile%time_ref), &
                       'offline_replay with namelist ' // trim(nml_file), errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))

  write (*, '(a)') 'offline_replay:  day  days_since_ref  ESM_pr  generated_pr   (domain means, mm/day)  wall_s'
  ! ---- replay ----------------------------------------------------------------------------
  do day = 1, ndays
    call system_clock(cday)
    rec = start_record + day - 1
    do k = 1, nreq
      call daily_read(files(k), rec, full, errmsg, errflg)
      if (errflg /= 0) call fail(trim(errmsg))
      fields(:, :, k) = full(i_first:i_last, j_first:j_last)
    end do
    call daily_read(prfile, rec, full, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    pr_esm = full(i_first:i_last, j_first:j_last)
    ! The record's time stamp lies within its day; the day starts at its floor.
    day_start = real(floor(prfile%time(rec) + 1.0e-6_dp), dp)
    got = .false.
    do step = 1, nsteps
      ! model_time is the END of the step: steps of this day end at
      ! day_start + dt, ..., day_start + 1 day, so the plugin's window is this day.
      t_end = day_start * 86400.0_dp + step * dt
      do k = 1, nreq
        call precipdiff_set_field(handle, trim(required(k)), fields(:, :, k), errmsg, errflg)
        call check_plugin('precipdiff_set_field(' // trim(required(k)) // ')')
      end do
      call precipdiff_run(handle, t_end, dt, pr_fine, pr_model, ready, errmsg, errflg)
      call check_plugin('precipdiff_run')
      if (ready .and. step /= nsteps) then
        write (errmsg, '(a,i0,a,i0,a,i0,a)') 'the plugin closed its window at step ', step, ' of ', &
             nsteps, ' on day ', day, ', not at the end of the day: window_s in &precipdiff_nml ' // &
             'must be 86400 and model_time must follow the plugin''s convention'
        call fail(trim(errmsg))
      end if
      if (ready) got = .true.
    end do
    if (.not. got) then
      write (*, '(a,i0,a)') 'offline_replay: note: no output for day ', day, &
           ' yet (lagged inference returns it when the next window closes)'
      cycle
    end if
    nbad = count(.not. ieee_is_finite(pr_model)) + count(.not. ieee_is_finite(pr_fine))
    if (nbad > 0) then
      write (errmsg, '(a,i0,a,i0)') 'the plugin returned ', nbad, ' non-finite values on day ', day
      call fail(trim(errmsg))
    end if
    call replay_out_write(out, day_start, pr_model, pr_fine, pr_esm, errmsg, errflg)
    if (errflg /= 0) call fail(trim(errmsg))
    call system_clock(c1)
    write (*, '(a,i5,f16.1,2f12.3,f28.2)') 'offline_replay: ', day, day_start, &
         sum(pr_esm) / size(pr_esm) * 86400.0_dp, sum(pr_model) / size(pr_model) * 86400.0_dp, &
         real(c1 - cday, dp) / rate
  end do

  call precipdiff_finalize(handle, errmsg, errflg)
  call check_plugin('precipdiff_finalize')
  call replay_out_close(out, errmsg, errflg)
  if (errflg /= 0) call fail(trim(errmsg))
  do k = 1, nreq
    call daily_close(files(k))
  end do
  call daily_close(prfile)
  call system_clock(c1)
  write (*, '(a,f8.2,a,f8.3,a)') 'offline_replay: wall time ', real(c1 - c0, dp) / rate, ' s (', &
       real(c1 - c0, dp) / rate / ndays, ' s per day incl. start-up)'
  write (*, '(a)') 'offline_replay: output written to ' // trim(output_file)

contains

  !> After every plugin call: print the plugin's message and stop on error.
  subroutine check_plugin(what)
    character(len=*), intent(in) :: what
    if (errflg /= 0) then
      write (*, '(a,i0,a)') 'offline_replay: ' // what // ' failed (errflg = ', errflg, '):'
      write (*, '(a)') '  ' // trim(errmsg)
      call fail(what // ' failed')
    end if
  end subroutine check_plugin

  !> The host program decides to stop: finalize the plugin, close the output, exit 1.
  subroutine fail(message)
    character(len=*), intent(in) :: message
    character(len=PD_ERRMSG_LEN) :: msg2
    integer :: flg2
    write (*, '(a)') 'offline_replay: error: ' // message
    if (handle /= PD_NO_HANDLE) call precipdiff_finalize(handle, msg2, flg2)
    call replay_out_close(out, msg2, flg2)
    error stop 1
  end subroutine fail

end program offline_replay

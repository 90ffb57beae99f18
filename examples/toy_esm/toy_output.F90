!> CF-netCDF output of the toy ESM (netCDF-Fortran): one record per simulated
!> day with the precipitation handed back by the plugin on the model grid, the
!> model state, daily-mean forcing, the water budget, and optionally the
!> plugin's fine-grid precipitation.
module toy_output
  use netcdf
  use toy_physics, only: dp, toy_grid_t
  implicit none
  private

  !> Open output file and its variable ids.
  type, public :: toy_output_t
    integer :: ncid = -1                !! netCDF file id
    logical :: has_fine = .false.       !! whether the fine-grid variable is written
    integer :: nrec = 0                 !! records written so far
    integer :: v_time = -1, v_time_bnds = -1, v_pr = -1, v_prw = -1, v_evap = -1
    integer :: v_u10 = -1, v_v10 = -1, v_msl = -1, v_pr_fine = -1
    integer :: v_gm_prw = -1, v_gm_evap = -1, v_gm_pr = -1, v_gm_pr_req = -1
    integer :: v_gm_limited = -1, v_residual = -1, v_prw_min = -1, v_prw_max = -1
    integer :: v_nan = -1, v_courant = -1
  end type toy_output_t

  !> Daily diagnostics written with each record (global, area-weighted).
  type, public :: toy_budget_t
    real(dp) :: water_start = 0.0_dp    !! global mean column water at the start of the day (kg m-2)
    real(dp) :: water_end = 0.0_dp      !! ... at the end of the day (kg m-2)
    real(dp) :: evap = 0.0_dp           !! evaporation during the day (kg m-2)
    real(dp) :: precip = 0.0_dp         !! precipitation removed from the column (kg m-2)
    real(dp) :: precip_requested = 0.0_dp  !! precipitation the plugin asked for (kg m-2)
    real(dp) :: limited = 0.0_dp        !! requested minus removed: not available in the column (kg m-2)
    real(dp) :: residual = 0.0_dp       !! (water_end - water_start) - (evap - precip) (kg m-2)
    real(dp) :: water_min = 0.0_dp      !! smallest column water at the end of the day (kg m-2)
    real(dp) :: water_max = 0.0_dp      !! largest column water at the end of the day (kg m-2)
    integer :: nan_count = 0            !! non-finite values in the state and the plugin output
    real(dp) :: courant = 0.0_dp        !! largest Courant number during the day
  end type toy_budget_t

  public :: output_open, output_write_day, output_close, restart_write, restart_read

contains

  subroutine check(status, what, errmsg, errflg)
    integer, intent(in) :: status
    character(len=*), intent(in) :: what
    character(len=*), intent(inout) :: errmsg
    integer, intent(inout) :: errflg
    if (status /= nf90_noerr .and. errflg == 0) then
      errmsg = 'toy_esm output: ' // trim(what) // ': ' // trim(nf90_strerror(status))
      errflg = 1
    end if
  end subroutine check

  !> Create the output file and define its dimensions, variables and CF attributes.
  subroutine output_open(out, path, grid, reference_time, lon_fine, lat_fine, history, errmsg, errflg)
    type(toy_output_t), intent(out) :: out          !! output handle
    character(len=*), intent(in) :: path            !! file name
    type(toy_grid_t), intent(in) :: grid            !! model grid
    character(len=*), intent(in) :: reference_time  !! 'YYYY-MM-DD hh:mm:ss' of model time 0
    real(dp), intent(in) :: lon_fine(:)             !! fine-grid longitudes (size 0: no fine output)
    real(dp), intent(in) :: lat_fine(:)             !! fine-grid latitudes
    character(len=*), intent(in) :: history         !! provenance line for the global attributes
    character(len=*), intent(out) :: errmsg         !! error message
    integer, intent(out) :: errflg                  !! error flag (0: success)
    integer :: d_time, d_lat, d_lon, d_bnds, d_latf, d_lonf, v_lat, v_lon, v_latb, v_lonb
    integer :: v_latf, v_lonf
    character(len=64) :: tunits

    errmsg = ''
    errflg = 0
    out%has_fine = size(lon_fine) > 0 .and. size(lat_fine) > 0
    call check(nf90_create(path, ior(nf90_clobber, nf90_netcdf4), out%ncid), &
               'cannot create ' // trim(path), errmsg, errflg)
    if (errflg /= 0) return
    tunits = 'days since ' // trim(reference_time)
    call check(nf90_def_dim(out%ncid, 'time', nf90_unlimited, d_time), 'def time', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'lat', grid%nlat, d_lat), 'def lat', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'lon', grid%nlon, d_lon), 'def lon', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'bnds', 2, d_bnds), 'def bnds', errmsg, errflg)

    call check(nf90_def_var(out%ncid, 'time', nf90_double, [d_time], out%v_time), 'time', errmsg, errflg)
    call put_att(out%v_time, 'standard_name', 'time')
    call put_att(out%v_time, 'units', trim(tunits))
    call put_att(out%v_time, 'calendar', 'proleptic_gregorian')
    call put_att(out%v_time, 'bounds', 'time_bnds')
    call put_att(out%v_time, 'axis', 'T')
    call check(nf90_def_var(out%ncid, 'time_bnds', nf90_double, [d_bnds, d_time], out%v_time_bnds), &
               'time_bnds', errmsg, errflg)
    call check(nf90_def_var(out%ncid, 'lat', nf90_double, [d_lat], v_lat), 'lat', errmsg, errflg)
    call put_att(v_lat, 'standard_name', 'latitude')
    call put_att(v_lat, 'units', 'degrees_north')
    call put_att(v_lat, 'bounds', 'lat_bnds')
    call put_att(v_lat, 'axis', 'Y')
    call check(nf90_def_var(out%ncid, 'lat_bnds', nf90_double, [d_bnds, d_lat], v_latb), &
               'lat_bnds', errmsg, errflg)
    call check(nf90_def_var(out%ncid, 'lon', nf90_double, [d_lon], v_lon), 'lon', errmsg, errflg)
    call put_att(v_lon, 'standard_name', 'longitude')
    call put_att(v_lon, 'units', 'degrees_east')
    call put_att(v_lon, 'bounds', 'lon_bnds')
    call put_att(v_lon, 'axis', 'X')
    call check(nf90_def_var(out%ncid, 'lon_bnds', nf90_double, [d_bnds, d_lon], v_lonb), &
               'lon_bnds', errmsg, errflg)

    call def_field(out%v_pr, 'pr', 'precipitation_flux', 'kg m-2 s-1', &
                   'precipitation from the precipdiff plugin on the model grid, daily mean', &
                   'time: mean')
    call def_field(out%v_prw, 'prw', 'atmosphere_mass_content_of_water_vapor', 'kg m-2', &
                   'column water vapour at the end of the day', 'time: point')
    call def_field(out%v_evap, 'evspsbl', 'water_evapotranspiration_flux', 'kg m-2 s-1', &
                   'evaporation, daily mean', 'time: mean')
    call def_field(out%v_u10, 'uas', 'eastward_wind', 'm s-1', &
                   'prescribed 10 m eastward wind, daily mean', 'time: mean')
    call def_field(out%v_v10, 'vas', 'northward_wind', 'm s-1', &
                   'prescribed 10 m northward wind, daily mean', 'time: mean')
    call def_field(out%v_msl, 'psl', 'air_pressure_at_mean_sea_level', 'Pa', &
                   'prescribed sea-level pressure, daily mean', 'time: mean')

    call def_series(out%v_gm_prw, 'global_prw', 'kg m-2', 'global mean column water vapour, end of day')
    call def_series(out%v_gm_evap, 'global_evap', 'kg m-2', 'global mean evaporation during the day')
    call def_series(out%v_gm_pr, 'global_pr', 'kg m-2', &
                    'global mean precipitation removed from the column during the day')
    call def_series(out%v_gm_pr_req, 'global_pr_requested', 'kg m-2', &
                    'global mean precipitation handed back by the plugin for the day')
    call def_series(out%v_gm_limited, 'global_pr_limited', 'kg m-2', &
                    'global mean precipitation not removed because the column had too little water')
    call def_series(out%v_residual, 'budget_residual', 'kg m-2', &
                    'change of global mean water minus (evaporation - precipitation)')
    call def_series(out%v_prw_min, 'prw_min', 'kg m-2', 'smallest column water vapour, end of day')
    call def_series(out%v_prw_max, 'prw_max', 'kg m-2', 'largest column water vapour, end of day')
    call def_series(out%v_courant, 'courant_max', '1', 'largest advective Courant number during the day')
    call check(nf90_def_var(out%ncid, 'nan_count', nf90_int, [d_time], out%v_nan), 'nan_count', errmsg, errflg)
    call put_att(out%v_nan, 'long_name', 'non-finite values in the model state and plugin output')

    if (out%has_fine) then
      call check(nf90_def_dim(out%ncid, 'lat_fine', size(lat_fine), d_latf), 'def lat_fine', errmsg, errflg)
      call check(nf90_def_dim(out%ncid, 'lon_fine', size(lon_fine), d_lonf), 'def lon_fine', errmsg, errflg)
      call check(nf90_def_var(out%ncid, 'lat_fine', nf90_double, [d_latf], v_latf), 'lat_fine', errmsg, errflg)
      call put_att(v_latf, 'standard_name', 'latitude')
      call put_att(v_latf, 'units', 'degrees_north')
      call check(nf90_def_var(out%ncid, 'lon_fine', nf90_double, [d_lonf], v_lonf), 'lon_fine', errmsg, errflg)
      call put_att(v_lonf, 'standard_name', 'longitude')
      call put_att(v_lonf, 'units', 'degrees_east')
      call check(nf90_def_var(out%ncid, 'pr_fine', nf90_float, [d_lonf, d_latf, d_time], out%v_pr_fine), &
                 'pr_fine', errmsg, errflg)
      if (errflg == 0) then
        call check(nf90_def_var_deflate(out%ncid, out%v_pr_fine, 1, 1, 1), 'deflate pr_fine', errmsg, errflg)
      end if
      call put_att(out%v_pr_fine, 'standard_name', 'precipitation_flux')
      call put_att(out%v_pr_fine, 'units', 'kg m-2 s-1')
      call put_att(out%v_pr_fine, 'long_name', &
                   'precipitation generated by the precipdiff plugin on its fine grid, daily mean')
      call put_att(out%v_pr_fine, 'cell_methods', 'time: mean')
    end if

    call check(nf90_put_att(out%ncid, nf90_global, 'Conventions', 'CF-1.8'), 'att', errmsg, errflg)
    call check(nf90_put_att(out%ncid, nf90_global, 'title', &
                            'precipdiff toy ESM: moisture advected by prescribed winds, ' // &
                            'precipitation from the precipdiff plugin'), 'att', errmsg, errflg)
    call check(nf90_put_att(out%ncid, nf90_global, 'source', 'precipdiff examples/toy_esm'), 'att', errmsg, errflg)
    call check(nf90_put_att(out%ncid, nf90_global, 'history', trim(history)), 'att', errmsg, errflg)
    call check(nf90_enddef(out%ncid), 'enddef', errmsg, errflg)
    if (errflg /= 0) return

    call check(nf90_put_var(out%ncid, v_lat, grid%lat_deg), 'put lat', errmsg, errflg)
    call check(nf90_put_var(out%ncid, v_lon, grid%lon_deg), 'put lon', errmsg, errflg)
    call check(nf90_put_var(out%ncid, v_latb, grid%lat_bnds_deg), 'put lat_bnds', errmsg, errflg)
    call check(nf90_put_var(out%ncid, v_lonb, grid%lon_bnds_deg), 'put lon_bnds', errmsg, errflg)
    if (out%has_fine) then
      call check(nf90_put_var(out%ncid, v_latf, lat_fine), 'put lat_fine', errmsg, errflg)
      call check(nf90_put_var(out%ncid, v_lonf, lon_fine), 'put lon_fine', errmsg, errflg)
    end if

  contains

    subroutine put_att(varid, name, val)
      integer, intent(in) :: varid
      character(len=*), intent(in) :: name, val
      call check(nf90_put_att(out%ncid, varid, name, val), 'attribute ' // name, errmsg, errflg)
    end subroutine put_att

    subroutine def_field(varid, name, std, units, long, methods)
      integer, intent(out) :: varid
      character(len=*), intent(in) :: name, std, units, long, methods
      call check(nf90_def_var(out%ncid, name, nf90_float, [d_lon, d_lat, d_time], varid), &
                 'define ' // name, errmsg, errflg)
      call put_att(varid, 'standard_name', std)
      call put_att(varid, 'units', units)
      call put_att(varid, 'long_name', long)
      call put_att(varid, 'cell_methods', methods)
    end subroutine def_field

    subroutine def_series(varid, name, units, long)
      integer, intent(out) :: varid
      character(len=*), intent(in) :: name, units, long
      call check(nf90_def_var(out%ncid, name, nf90_double, [d_time], varid), 'define ' // name, errmsg, errflg)
      call put_att(varid, 'units', units)
      call put_att(varid, 'long_name', long)
    end subroutine def_series

  end subroutine output_open

  !> Append one day: time (days since the reference, middle of the day), fields and budget.
  subroutine output_write_day(out, day_start, day_end, pr, prw, evap, u10, v10, msl, pr_fine, &
                              budget, errmsg, errflg)
    type(toy_output_t), intent(inout) :: out   !! output handle
    real(dp), intent(in) :: day_start          !! start of the day (days since reference)
    real(dp), intent(in) :: day_end            !! end of the day (days since reference)
    real(dp), intent(in) :: pr(:, :)           !! precipitation (kg m-2 s-1), model grid
    real(dp), intent(in) :: prw(:, :)          !! column water vapour (kg m-2)
    real(dp), intent(in) :: evap(:, :)         !! evaporation (kg m-2 s-1)
    real(dp), intent(in) :: u10(:, :)          !! daily-mean eastward wind (m s-1)
    real(dp), intent(in) :: v10(:, :)          !! daily-mean northward wind (m s-1)
    real(dp), intent(in) :: msl(:, :)          !! daily-mean sea-level pressure (Pa)
    real(dp), intent(in) :: pr_fine(:, :)      !! fine-grid precipitation (kg m-2 s-1), ignored without fine output
    type(toy_budget_t), intent(in) :: budget   !! the day's budget
    character(len=*), intent(out) :: errmsg    !! error message
    integer, intent(out) :: errflg             !! error flag (0: success)
    integer :: r

    errmsg = ''
    errflg = 0
    r = out%nrec + 1
    call check(nf90_put_var(out%ncid, out%v_time, [0.5_dp * (day_start + day_end)], [r], [1]), &
               'put time', errmsg, errflg)
    call check(nf90_put_var(out%ncid, out%v_time_bnds, reshape([day_start, day_end], [2, 1]), &
                            [1, r], [2, 1]), 'put time_bnds', errmsg, errflg)
    call put2(out%v_pr, pr, 'pr')
    call put2(out%v_prw, prw, 'prw')
    call put2(out%v_evap, evap, 'evspsbl')
    call put2(out%v_u10, u10, 'uas')
    call put2(out%v_v10, v10, 'vas')
    call put2(out%v_msl, msl, 'psl')
    if (out%has_fine) call put2(out%v_pr_fine, pr_fine, 'pr_fine')
    call put1(out%v_gm_prw, budget%water_end, 'global_prw')
    call put1(out%v_gm_evap, budget%evap, 'global_evap')
    call put1(out%v_gm_pr, budget%precip, 'global_pr')
    call put1(out%v_gm_pr_req, budget%precip_requested, 'global_pr_requested')
    call put1(out%v_gm_limited, budget%limited, 'global_pr_limited')
    call put1(out%v_residual, budget%residual, 'budget_residual')
    call put1(out%v_prw_min, budget%water_min, 'prw_min')
    call put1(out%v_prw_max, budget%water_max, 'prw_max')
    call put1(out%v_courant, budget%courant, 'courant_max')
    call check(nf90_put_var(out%ncid, out%v_nan, [budget%nan_count], [r], [1]), 'put nan_count', errmsg, errflg)
    call check(nf90_sync(out%ncid), 'sync', errmsg, errflg)
    if (errflg == 0) out%nrec = r

  contains

    subroutine put2(varid, field, name)
      integer, intent(in) :: varid
      real(dp), intent(in) :: field(:, :)
      character(len=*), intent(in) :: name
      call check(nf90_put_var(out%ncid, varid, real(field, kind=4), [1, 1, r], &
                              [size(field, 1), size(field, 2), 1]), 'put ' // name, errmsg, errflg)
    end subroutine put2

    subroutine put1(varid, val, name)
      integer, intent(in) :: varid
      real(dp), intent(in) :: val
      character(len=*), intent(in) :: name
      call check(nf90_put_var(out%ncid, varid, [val], [r], [1]), 'put ' // name, errmsg, errflg)
    end subroutine put1

  end subroutine output_write_day

  !> Close the output file (safe to call on a handle that was never opened).
  subroutine output_close(out, errmsg, errflg)
    type(toy_output_t), intent(inout) :: out  !! output handle
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag (0: success)
    errmsg = ''
    errflg = 0
    if (out%ncid < 0) return
    call check(nf90_close(out%ncid), 'close', errmsg, errflg)
    out%ncid = -1
  end subroutine output_close

  !> Write the model's own restart: column water, the precipitation rate in use
  !> (the plugin's latest output, the sink of the next day), the last model-grid
  !> output, and the number of days simulated so far. The plugin writes its own.
  subroutine restart_write(path, water, pr_rate, pr_out, day, errmsg, errflg)
    character(len=*), intent(in) :: path      !! restart file
    real(dp), intent(in) :: water(:, :)       !! column water vapour (kg m-2)
    real(dp), intent(in) :: pr_rate(:, :)     !! precipitation rate in use (kg m-2 s-1)
    real(dp), intent(in) :: pr_out(:, :)      !! latest plugin output on the model grid
    integer, intent(in) :: day                !! days simulated since model time 0
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag (0: success)
    integer :: ncid, dlon, dlat, vw, vp, vo, vd
    errmsg = ''
    errflg = 0
    call check(nf90_create(path, ior(nf90_clobber, nf90_netcdf4), ncid), &
               'cannot create restart ' // trim(path), errmsg, errflg)
    if (errflg /= 0) return
    call check(nf90_def_dim(ncid, 'lon', size(water, 1), dlon), 'restart', errmsg, errflg)
    call check(nf90_def_dim(ncid, 'lat', size(water, 2), dlat), 'restart', errmsg, errflg)
    call check(nf90_def_var(ncid, 'prw', nf90_double, [dlon, dlat], vw), 'restart', errmsg, errflg)
    call check(nf90_def_var(ncid, 'pr_rate', nf90_double, [dlon, dlat], vp), 'restart', errmsg, errflg)
    call check(nf90_def_var(ncid, 'pr_out', nf90_double, [dlon, dlat], vo), 'restart', errmsg, errflg)
    call check(nf90_def_var(ncid, 'day', nf90_int, vd), 'restart', errmsg, errflg)
    ! CF attributes, like every file the project writes (tests run cfchecks on it)
    call att(vw, 'standard_name', 'atmosphere_mass_content_of_water_vapor')
    call att(vw, 'long_name', 'column water vapour')
    call att(vw, 'units', 'kg m-2')
    call att(vp, 'standard_name', 'precipitation_flux')
    call att(vp, 'long_name', 'precipitation rate in use (the sink of the next step)')
    call att(vp, 'units', 'kg m-2 s-1')
    call att(vo, 'standard_name', 'precipitation_flux')
    call att(vo, 'long_name', 'latest precipdiff output on the model grid')
    call att(vo, 'units', 'kg m-2 s-1')
    call att(vd, 'long_name', 'days simulated since model time 0')
    call att(vd, 'units', 'day')
    call att(nf90_global, 'Conventions', 'CF-1.8')
    call check(nf90_put_att(ncid, nf90_global, 'title', 'toy_esm restart'), 'restart', errmsg, errflg)
    call check(nf90_enddef(ncid), 'restart', errmsg, errflg)
    call check(nf90_put_var(ncid, vw, water), 'restart prw', errmsg, errflg)
    call check(nf90_put_var(ncid, vp, pr_rate), 'restart pr_rate', errmsg, errflg)
    call check(nf90_put_var(ncid, vo, pr_out), 'restart pr_out', errmsg, errflg)
    call check(nf90_put_var(ncid, vd, day), 'restart day', errmsg, errflg)
    call check(nf90_close(ncid), 'close restart', errmsg, errflg)
  contains
    subroutine att(varid, name, val)
      integer, intent(in) :: varid
      character(len=*), intent(in) :: name, val
      call check(nf90_put_att(ncid, varid, name, val), 'restart attribute ' // name, errmsg, errflg)
    end subroutine att
  end subroutine restart_write

  !> Read a restart written by restart_write on the same grid.
  subroutine restart_read(path, water, pr_rate, pr_out, day, errmsg, errflg)
    character(len=*), intent(in) :: path         !! restart file
    real(dp), intent(inout) :: water(:, :)       !! column water vapour (kg m-2)
    real(dp), intent(inout) :: pr_rate(:, :)     !! precipitation rate in use (kg m-2 s-1)
    real(dp), intent(inout) :: pr_out(:, :)      !! latest plugin output on the model grid
    integer, intent(out) :: day                  !! days simulated since model time 0
    character(len=*), intent(out) :: errmsg      !! error message
    integer, intent(out) :: errflg               !! error flag (0: success)
    integer :: ncid, id, n1, n2
    errmsg = ''
    errflg = 0
    day = 0
    call check(nf90_open(path, nf90_nowrite, ncid), 'cannot open restart ' // trim(path), errmsg, errflg)
    if (errflg /= 0) return
    call check(nf90_inq_dimid(ncid, 'lon', id), trim(path), errmsg, errflg)
    call check(nf90_inquire_dimension(ncid, id, len=n1), trim(path), errmsg, errflg)
    call check(nf90_inq_dimid(ncid, 'lat', id), trim(path), errmsg, errflg)
    call check(nf90_inquire_dimension(ncid, id, len=n2), trim(path), errmsg, errflg)
    if (errflg == 0 .and. (n1 /= size(water, 1) .or. n2 /= size(water, 2))) then
      write (errmsg, '(a,i0,a,i0,a,i0,a,i0)') 'restart ' // trim(path) // ' is for a ', n1, ' x ', n2, &
           ' grid, this run has ', size(water, 1), ' x ', size(water, 2)
      errflg = 1
    end if
    call check(nf90_inq_varid(ncid, 'prw', id), trim(path), errmsg, errflg)
    call check(nf90_get_var(ncid, id, water), trim(path) // ': prw', errmsg, errflg)
    call check(nf90_inq_varid(ncid, 'pr_rate', id), trim(path), errmsg, errflg)
    call check(nf90_get_var(ncid, id, pr_rate), trim(path) // ': pr_rate', errmsg, errflg)
    call check(nf90_inq_varid(ncid, 'pr_out', id), trim(path), errmsg, errflg)
    call check(nf90_get_var(ncid, id, pr_out), trim(path) // ': pr_out', errmsg, errflg)
    call check(nf90_inq_varid(ncid, 'day', id), trim(path), errmsg, errflg)
    call check(nf90_get_var(ncid, id, day), trim(path) // ': day', errmsg, errflg)
    id = nf90_close(ncid)
  end subroutine restart_read

end module toy_output

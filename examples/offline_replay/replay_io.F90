!> netCDF-Fortran input and output of the offline replay: daily ESM fields in,
!> generated precipitation out (CF-1.8).
module replay_io
  use netcdf
  implicit none
  private

  integer, parameter, public :: dp = kind(1.0d0)

  !> One open daily input file (time, lat, lon) with a single 3-D data variable.
  type, public :: daily_file_t
    character(len=512) :: path = ''      !! file name
    character(len=nf90_max_name) :: varname = ''   !! name of the data variable in the file
    character(len=64) :: units = ''      !! its units attribute
    integer :: ncid = -1                 !! netCDF id
    integer :: varid = -1                !! data variable id
    integer :: nlon = 0                  !! longitudes
    integer :: nlat = 0                  !! latitudes
    integer :: ntime = 0                 !! records
    real(dp), allocatable :: lon(:)      !! longitudes (degrees east)
    real(dp), allocatable :: lat(:)      !! latitudes (degrees north)
    real(dp), allocatable :: time(:)     !! time values (days since time_ref)
    character(len=64) :: time_ref = ''   !! 'YYYY-MM-DD' of the time units
  end type daily_file_t

  !> The output file.
  type, public :: replay_output_t
    integer :: ncid = -1                 !! netCDF id
    integer :: nrec = 0                  !! records written
    integer :: v_time = -1, v_bnds = -1, v_pr = -1, v_pr_fine = -1, v_pr_esm = -1
  end type replay_output_t

  public :: daily_open, daily_read, daily_close, replay_out_open, replay_out_write, replay_out_close

contains

  subroutine check(status, what, errmsg, errflg)
    integer, intent(in) :: status
    character(len=*), intent(in) :: what
    character(len=*), intent(inout) :: errmsg
    integer, intent(inout) :: errflg
    if (status /= nf90_noerr .and. errflg == 0) then
      errmsg = trim(what) // ': ' // trim(nf90_strerror(status))
      errflg = 1
    end if
  end subroutine check

  !> Open a daily file and read its coordinates; the data variable is the one
  !> with three dimensions (time, lat, lon).
  subroutine daily_open(f, path, errmsg, errflg)
    type(daily_file_t), intent(out) :: f      !! the opened file
    character(len=*), intent(in) :: path      !! file name
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag (0: success)
    integer :: nvars, v, ndims, dimids(nf90_max_var_dims), id, k
    character(len=nf90_max_name) :: name, dname
    character(len=128) :: tunits

    errmsg = ''
    errflg = 0
    f%path = path
    call check(nf90_open(path, nf90_nowrite, f%ncid), 'cannot open "' // trim(path) // '"', errmsg, errflg)
    if (errflg /= 0) return
    call check(nf90_inquire(f%ncid, nVariables=nvars), trim(path), errmsg, errflg)
    do v = 1, nvars
      call check(nf90_inquire_variable(f%ncid, v, name=name, ndims=ndims, dimids=dimids), &
                 trim(path), errmsg, errflg)
      if (errflg /= 0) return
      if (ndims == 3) then
        f%varid = v
        f%varname = name
        ! Fortran order (lon, lat, time) of a C-order (time, lat, lon) variable.
        do k = 1, 3
          call check(nf90_inquire_dimension(f%ncid, dimids(k), name=dname), trim(path), errmsg, errflg)
          if (errflg /= 0) return
          if (k == 1 .and. dname /= 'lon' .or. k == 2 .and. dname /= 'lat' .or. &
              k == 3 .and. dname /= 'time') then
            errmsg = '"' // trim(path) // '": variable ' // trim(name) // &
                     ' must have dimensions (time, lat, lon), found dimension ' // trim(dname)
            errflg = 1
            return
          end if
        end do
        exit
      end if
    end do
    if (f%varid < 0) then
      errmsg = '"' // trim(path) // '" has no (time, lat, lon) data variable'
      errflg = 1
      return
    end if
    if (nf90_get_att(f%ncid, f%varid, 'units', f%units) /= nf90_noerr) f%units = ''
    call read_coord('lon', f%lon, f%nlon)
    call read_coord('lat', f%lat, f%nlat)
    call read_coord('time', f%time, f%ntime)
    if (errflg /= 0) return
    call check(nf90_inq_varid(f%ncid, 'time', id), trim(path), errmsg, errflg)
    tunits = ''
    call check(nf90_get_att(f%ncid, id, 'units', tunits), trim(path) // ': time units', errmsg, errflg)
    if (errflg /= 0) return
    if (tunits(1:11) /= 'days since ' .or. len_trim(tunits) < 21) then
      errmsg = '"' // trim(path) // '": time units "' // trim(tunits) // &
               '" are not "days since YYYY-MM-DD..."'
      errflg = 1
      return
    end if
    f%time_ref = tunits(12:21)

  contains

    subroutine read_coord(cname, values, n)
      character(len=*), intent(in) :: cname
      real(dp), allocatable, intent(out) :: values(:)
      integer, intent(out) :: n
      integer :: cid, did(1)
      n = 0
      allocate (values(0))
      if (errflg /= 0) return
      call check(nf90_inq_varid(f%ncid, cname, cid), '"' // trim(path) // '": coordinate ' // cname, &
                 errmsg, errflg)
      if (errflg /= 0) return
      call check(nf90_inquire_variable(f%ncid, cid, dimids=did), trim(path), errmsg, errflg)
      call check(nf90_inquire_dimension(f%ncid, did(1), len=n), trim(path), errmsg, errflg)
      if (errflg /= 0) return
      deallocate (values)
      allocate (values(n))
      call check(nf90_get_var(f%ncid, cid, values), '"' // trim(path) // '": read ' // cname, errmsg, errflg)
    end subroutine read_coord

  end subroutine daily_open

  !> Read record rec (1-based) of the data variable into field(nlon, nlat).
  subroutine daily_read(f, rec, field, errmsg, errflg)
    type(daily_file_t), intent(in) :: f      !! open file
    integer, intent(in) :: rec               !! record (1-based)
    real(dp), intent(out) :: field(:, :)     !! (nlon, nlat) values
    character(len=*), intent(out) :: errmsg  !! error message
    integer, intent(out) :: errflg           !! error flag (0: success)
    errmsg = ''
    errflg = 0
    field = 0.0_dp
    if (rec < 1 .or. rec > f%ntime) then
      write (errmsg, '(a,i0,a,i0,a)') '"' // trim(f%path) // '": record ', rec, ' outside 1..', f%ntime, ''
      errflg = 1
      return
    end if
    call check(nf90_get_var(f%ncid, f%varid, field, start=[1, 1, rec], count=[f%nlon, f%nlat, 1]), &
               '"' // trim(f%path) // '": read ' // trim(f%varname), errmsg, errflg)
  end subroutine daily_read

  !> Close a daily file (safe on one never opened).
  subroutine daily_close(f)
    type(daily_file_t), intent(inout) :: f  !! file
    integer :: status
    if (f%ncid >= 0) status = nf90_close(f%ncid)
    f%ncid = -1
  end subroutine daily_close

  !> Create the output file: pr (generated, ESM grid), pr_fine (generated, fine
  !> grid) and pr_esm (the ESM's own precipitation), daily means, CF-1.8.
  subroutine replay_out_open(out, path, lon, lat, lon_fine, lat_fine, time_ref, history, errmsg, errflg)
    type(replay_output_t), intent(out) :: out  !! output handle
    character(len=*), intent(in) :: path       !! file name
    real(dp), intent(in) :: lon(:), lat(:)     !! ESM grid handed to the plugin
    real(dp), intent(in) :: lon_fine(:), lat_fine(:)  !! fine grid of the bundle
    character(len=*), intent(in) :: time_ref   !! 'YYYY-MM-DD' (time units: days since then, 00:00)
    character(len=*), intent(in) :: history    !! provenance line
    character(len=*), intent(out) :: errmsg    !! error message
    integer, intent(out) :: errflg             !! error flag (0: success)
    integer :: d_t, d_b, d_la, d_lo, d_laf, d_lof, v_la, v_lo, v_laf, v_lof

    errmsg = ''
    errflg = 0
    call check(nf90_create(path, ior(nf90_clobber, nf90_netcdf4), out%ncid), &
               'cannot create "' // trim(path) // '"', errmsg, errflg)
    if (errflg /= 0) return
    call check(nf90_def_dim(out%ncid, 'time', nf90_unlimited, d_t), 'time', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'bnds', 2, d_b), 'bnds', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'lat', size(lat), d_la), 'lat', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'lon', size(lon), d_lo), 'lon', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'lat_fine', size(lat_fine), d_laf), 'lat_fine', errmsg, errflg)
    call check(nf90_def_dim(out%ncid, 'lon_fine', size(lon_fine), d_lof), 'lon_fine', errmsg, errflg)
    call check(nf90_def_var(out%ncid, 'time', nf90_double, [d_t], out%v_time), 'time', errmsg, errflg)
    call att(out%v_time, 'standard_name', 'time')
    call att(out%v_time, 'units', 'days since ' // trim(time_ref) // ' 00:00:00')
    call att(out%v_time, 'calendar', 'proleptic_gregorian')
    call att(out%v_time, 'bounds', 'time_bnds')
    call check(nf90_def_var(out%ncid, 'time_bnds', nf90_double, [d_b, d_t], out%v_bnds), 'time_bnds', errmsg, errflg)
    call coord(v_la, 'lat', d_la, 'latitude', 'degrees_north')
    call coord(v_lo, 'lon', d_lo, 'longitude', 'degrees_east')
    call coord(v_laf, 'lat_fine', d_laf, 'latitude', 'degrees_north')
    call coord(v_lof, 'lon_fine', d_lof, 'longitude', 'degrees_east')
    call field(out%v_pr, 'pr', [d_lo, d_la, d_t], &
               'precipitation generated by precipdiff, averaged to the ESM grid')
    call field(out%v_pr_fine, 'pr_fine', [d_lof, d_laf, d_t], &
               'precipitation generated by precipdiff on the fine grid')
    call field(out%v_pr_esm, 'pr_esm', [d_lo, d_la, d_t], &
               'precipitation of the ESM itself (CNRM-CM5 pr), for comparison')
    call check(nf90_put_att(out%ncid, nf90_global, 'Conventions', 'CF-1.8'), 'att', errmsg, errflg)
    call check(nf90_put_att(out%ncid, nf90_global, 'title', &
               'precipdiff offline replay of CNRM-CM5 daily fields over Iberia'), 'att', errmsg, errflg)
    call check(nf90_put_att(out%ncid, nf90_global, 'source', &
               'precipdiff examples/offline_replay; input: CNRM-CM5 r1i1p1 historical via ' // &
               'SantanderMetGroup/climate4R.datasets (LGPL-3)'), 'att', errmsg, errflg)
    call check(nf90_put_att(out%ncid, nf90_global, 'history', trim(history)), 'att', errmsg, errflg)
    call check(nf90_enddef(out%ncid), 'enddef', errmsg, errflg)
    if (errflg /= 0) return
    call check(nf90_put_var(out%ncid, v_la, lat), 'put lat', errmsg, errflg)
    call check(nf90_put_var(out%ncid, v_lo, lon), 'put lon', errmsg, errflg)
    call check(nf90_put_var(out%ncid, v_laf, lat_fine), 'put lat_fine', errmsg, errflg)
    call check(nf90_put_var(out%ncid, v_lof, lon_fine), 'put lon_fine', errmsg, errflg)

  contains

    subroutine att(varid, name, val)
      integer, intent(in) :: varid
      character(len=*), intent(in) :: name, val
      call check(nf90_put_att(out%ncid, varid, name, val), 'attribute ' // name, errmsg, errflg)
    end subroutine att

    subroutine coord(varid, name, dimid, std, units)
      integer, intent(out) :: varid
      character(len=*), intent(in) :: name, std, units
      integer, intent(in) :: dimid
      call check(nf90_def_var(out%ncid, name, nf90_double, [dimid], varid), name, errmsg, errflg)
      call att(varid, 'standard_name', std)
      call att(varid, 'units', units)
    end subroutine coord

    subroutine field(varid, name, dims, long)
      integer, intent(out) :: varid
      character(len=*), intent(in) :: name, long
      integer, intent(in) :: dims(3)
      call check(nf90_def_var(out%ncid, name, nf90_float, dims, varid), name, errmsg, errflg)
      call att(varid, 'standard_name', 'precipitation_flux')
      call att(varid, 'units', 'kg m-2 s-1')
      call att(varid, 'long_name', long)
      call att(varid, 'cell_methods', 'time: mean')
    end subroutine field

  end subroutine replay_out_open

  !> Append one day.
  subroutine replay_out_write(out, day_start, pr, pr_fine, pr_esm, errmsg, errflg)
    type(replay_output_t), intent(inout) :: out  !! output handle
    real(dp), intent(in) :: day_start            !! start of the day (days since time_ref 00:00)
    real(dp), intent(in) :: pr(:, :)             !! generated, ESM grid (kg m-2 s-1)
    real(dp), intent(in) :: pr_fine(:, :)        !! generated, fine grid (kg m-2 s-1)
    real(dp), intent(in) :: pr_esm(:, :)         !! ESM's own (kg m-2 s-1)
    character(len=*), intent(out) :: errmsg      !! error message
    integer, intent(out) :: errflg               !! error flag (0: success)
    integer :: r
    errmsg = ''
    errflg = 0
    r = out%nrec + 1
    call check(nf90_put_var(out%ncid, out%v_time, [day_start + 0.5_dp], [r], [1]), 'put time', errmsg, errflg)
    call check(nf90_put_var(out%ncid, out%v_bnds, reshape([day_start, day_start + 1.0_dp], [2, 1]), &
                            [1, r], [2, 1]), 'put time_bnds', errmsg, errflg)
    call check(nf90_put_var(out%ncid, out%v_pr, real(pr, 4), [1, 1, r], [size(pr, 1), size(pr, 2), 1]), &
               'put pr', errmsg, errflg)
    call check(nf90_put_var(out%ncid, out%v_pr_fine, real(pr_fine, 4), [1, 1, r], &
                            [size(pr_fine, 1), size(pr_fine, 2), 1]), 'put pr_fine', errmsg, errflg)
    call check(nf90_put_var(out%ncid, out%v_pr_esm, real(pr_esm, 4), [1, 1, r], &
                            [size(pr_esm, 1), size(pr_esm, 2), 1]), 'put pr_esm', errmsg, errflg)
    call check(nf90_sync(out%ncid), 'sync', errmsg, errflg)
    if (errflg == 0) out%nrec = r
  end subroutine replay_out_write

  !> Close the output (safe on one never opened).
  subroutine replay_out_close(out, errmsg, errflg)
    type(replay_output_t), intent(inout) :: out  !! output handle
    character(len=*), intent(out) :: errmsg      !! error message
    integer, intent(out) :: errflg               !! error flag (0: success)
    errmsg = ''
    errflg = 0
    if (out%ncid < 0) return
    call check(nf90_close(out%ncid), 'close', errmsg, errflg)
    out%ncid = -1
  end subroutine replay_out_close

end module replay_io

!> Daily CF-1.8 netCDF output of the SPEEDY-precipdiff driver.
!>
!> One file per run segment: maps (time, lat, lon) as float32 and global series (time)
!> as float64, registered by name before the file is defined and then written one day
!> (record) at a time. Every routine returns errmsg/errflg; nothing stops the program.
module speedy_output
  use netcdf
  use types, only: p
  use params, only: ix, il
  implicit none
  private

  public :: output_t, output_create, output_add_map, output_add_series, output_enddef
  public :: output_put_map, output_put_series, output_put_time, output_close

  integer, parameter :: MAXVAR = 64

  type :: output_t
    integer :: ncid = -1
    integer :: dim_time = -1, dim_lat = -1, dim_lon = -1, dim_bnds = -1
    integer :: var_time = -1, var_time_bnds = -1
    integer :: nvar = 0
    character(len=32) :: names(MAXVAR) = ''
    integer :: varids(MAXVAR) = -1
    logical :: is_map(MAXVAR) = .false.
  end type output_t

contains

  !> Create the file, its dimensions and coordinates (left in define mode for the
  !> variables registered next; output_enddef ends it).
  subroutine output_create(out, path, lon, lat, lat_edges, reference_date, title, history, &
                           errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(in) :: path, reference_date, title, history
    real(p), intent(in) :: lon(ix), lat(il), lat_edges(il + 1)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: vlat, vlon, vlatb, vlonb, i
    real(p) :: lonb(2, ix), latb(2, il)
    errflg = 0
    errmsg = ''
    call chk(nf90_create(path, ior(NF90_CLOBBER, NF90_NETCDF4), out%ncid), 'create ' // path)
    if (errflg /= 0) return
    call chk(nf90_def_dim(out%ncid, 'time', NF90_UNLIMITED, out%dim_time), 'dimension time')
    call chk(nf90_def_dim(out%ncid, 'lat', il, out%dim_lat), 'dimension lat')
    call chk(nf90_def_dim(out%ncid, 'lon', ix, out%dim_lon), 'dimension lon')
    call chk(nf90_def_dim(out%ncid, 'bnds', 2, out%dim_bnds), 'dimension bnds')
    call chk(nf90_def_var(out%ncid, 'time', NF90_DOUBLE, [out%dim_time], out%var_time), 'time')
    call chk(nf90_put_att(out%ncid, out%var_time, 'units', 'days since ' // trim(reference_date)), &
             'time units')
    call chk(nf90_put_att(out%ncid, out%var_time, 'calendar', 'standard'), 'time calendar')
    call chk(nf90_put_att(out%ncid, out%var_time, 'standard_name', 'time'), 'time name')
    call chk(nf90_put_att(out%ncid, out%var_time, 'bounds', 'time_bnds'), 'time bounds')
    call chk(nf90_def_var(out%ncid, 'time_bnds', NF90_DOUBLE, [out%dim_bnds, out%dim_time], &
                          out%var_time_bnds), 'time_bnds')
    call chk(nf90_def_var(out%ncid, 'lat', NF90_DOUBLE, [out%dim_lat], vlat), 'lat')
    call chk(nf90_put_att(out%ncid, vlat, 'units', 'degrees_north'), 'lat units')
    call chk(nf90_put_att(out%ncid, vlat, 'standard_name', 'latitude'), 'lat name')
    call chk(nf90_put_att(out%ncid, vlat, 'bounds', 'lat_bnds'), 'lat bounds')
    call chk(nf90_def_var(out%ncid, 'lon', NF90_DOUBLE, [out%dim_lon], vlon), 'lon')
    call chk(nf90_put_att(out%ncid, vlon, 'units', 'degrees_east'), 'lon units')
    call chk(nf90_put_att(out%ncid, vlon, 'standard_name', 'longitude'), 'lon name')
    call chk(nf90_put_att(out%ncid, vlon, 'bounds', 'lon_bnds'), 'lon bounds')
    call chk(nf90_def_var(out%ncid, 'lat_bnds', NF90_DOUBLE, [out%dim_bnds, out%dim_lat], vlatb), &
             'lat_bnds')
    call chk(nf90_def_var(out%ncid, 'lon_bnds', NF90_DOUBLE, [out%dim_bnds, out%dim_lon], vlonb), &
             'lon_bnds')
    call chk(nf90_put_att(out%ncid, NF90_GLOBAL, 'Conventions', 'CF-1.8'), 'Conventions')
    call chk(nf90_put_att(out%ncid, NF90_GLOBAL, 'title', title), 'title')
    call chk(nf90_put_att(out%ncid, NF90_GLOBAL, 'history', history), 'history')
    call chk(nf90_put_att(out%ncid, NF90_GLOBAL, 'source', &
         'SPEEDY (speedy.f90, T30 L8; Molteni 2003, Kucharski et al. 2006, 2013; MIT licence, ' // &
         'Copyright (c) 2020 Fred Kucharski, Franco Molteni, Sam Hatfield) driven by ' // &
         'examples/speedy/speedy_precipdiff of precipdiff'), 'source')
    call chk(nf90_put_att(out%ncid, NF90_GLOBAL, 'grid', &
         'T30 Gaussian grid 96x48; lat_bnds enclose areas proportional to the Gaussian weights'), 'grid')
    do i = 1, ix
      lonb(1, i) = lon(i) - 0.5_p * 360.0_p / ix
      lonb(2, i) = lon(i) + 0.5_p * 360.0_p / ix
    end do
    do i = 1, il
      latb(1, i) = lat_edges(i)
      latb(2, i) = lat_edges(i + 1)
    end do
    call chk(nf90_enddef(out%ncid), 'enddef')
    call chk(nf90_put_var(out%ncid, vlat, lat), 'write lat')
    call chk(nf90_put_var(out%ncid, vlon, lon), 'write lon')
    call chk(nf90_put_var(out%ncid, vlatb, latb), 'write lat_bnds')
    call chk(nf90_put_var(out%ncid, vlonb, lonb), 'write lon_bnds')
    call chk(nf90_redef(out%ncid), 'redef')
  contains
    !> Record the first failing call only.
    subroutine chk(code, what)
      integer, intent(in) :: code
      character(len=*), intent(in) :: what
      if (errflg == 0 .and. code /= NF90_NOERR) &
        call set_error(errmsg, errflg, 'output ' // trim(path) // ': ' // what // ': ' // &
                       trim(nf90_strerror(code)))
    end subroutine chk
  end subroutine output_create

  !> Register a daily map (float32, time x lat x lon).
  subroutine output_add_map(out, name, long_name, units, standard_name, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(in) :: name, long_name, units, standard_name
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call add_var(out, name, long_name, units, standard_name, .true., errmsg, errflg)
  end subroutine output_add_map

  !> Register a daily global series (float64, time).
  subroutine output_add_series(out, name, long_name, units, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(in) :: name, long_name, units
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call add_var(out, name, long_name, units, '', .false., errmsg, errflg)
  end subroutine output_add_series

  subroutine add_var(out, name, long_name, units, standard_name, is_map, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(in) :: name, long_name, units, standard_name
    logical, intent(in) :: is_map
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ierr, vid
    errflg = 0
    errmsg = ''
    if (out%nvar >= MAXVAR) then
      call set_error(errmsg, errflg, 'output: too many variables')
      return
    end if
    if (is_map) then
      ierr = nf90_def_var(out%ncid, name, NF90_FLOAT, [out%dim_lon, out%dim_lat, out%dim_time], vid, &
                          deflate_level=1, chunksizes=[ix, il, 1])
    else
      ierr = nf90_def_var(out%ncid, name, NF90_DOUBLE, [out%dim_time], vid)
    end if
    if (ierr == NF90_NOERR) ierr = nf90_put_att(out%ncid, vid, 'long_name', long_name)
    if (ierr == NF90_NOERR) ierr = nf90_put_att(out%ncid, vid, 'units', units)
    if (ierr == NF90_NOERR .and. len_trim(standard_name) > 0) &
      ierr = nf90_put_att(out%ncid, vid, 'standard_name', standard_name)
    if (ierr == NF90_NOERR .and. is_map) ierr = nf90_put_att(out%ncid, vid, 'cell_methods', 'time: mean')
    if (ierr /= NF90_NOERR) then
      call set_error(errmsg, errflg, 'output: define ' // name // ': ' // nf90_strerror(ierr))
      return
    end if
    out%nvar = out%nvar + 1
    out%names(out%nvar) = name
    out%varids(out%nvar) = vid
    out%is_map(out%nvar) = is_map
  end subroutine add_var

  subroutine output_enddef(out, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ierr
    errflg = 0
    errmsg = ''
    ierr = nf90_enddef(out%ncid)
    if (ierr /= NF90_NOERR) call set_error(errmsg, errflg, 'output: enddef: ' // nf90_strerror(ierr))
  end subroutine output_enddef

  !> Time of record `rec`: the day [day_start, day_end] in days since the reference date.
  subroutine output_put_time(out, rec, day_start, day_end, errmsg, errflg)
    type(output_t), intent(inout) :: out
    integer, intent(in) :: rec
    real(p), intent(in) :: day_start, day_end
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ierr
    errflg = 0
    errmsg = ''
    ierr = nf90_put_var(out%ncid, out%var_time, [0.5_p * (day_start + day_end)], start=[rec], count=[1])
    if (ierr == NF90_NOERR) ierr = nf90_put_var(out%ncid, out%var_time_bnds, &
                                                reshape([day_start, day_end], [2, 1]), &
                                                start=[1, rec], count=[2, 1])
    if (ierr /= NF90_NOERR) call set_error(errmsg, errflg, 'output: time: ' // nf90_strerror(ierr))
  end subroutine output_put_time

  subroutine output_put_map(out, name, rec, field, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(in) :: name
    integer, intent(in) :: rec
    real(p), intent(in) :: field(ix, il)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: k, ierr
    k = find(out, name, .true., errmsg, errflg)
    if (errflg /= 0) return
    ierr = nf90_put_var(out%ncid, out%varids(k), real(field, kind(1.0)), start=[1, 1, rec], &
                        count=[ix, il, 1])
    if (ierr /= NF90_NOERR) call set_error(errmsg, errflg, 'output: write ' // name // ': ' // &
                                           nf90_strerror(ierr))
  end subroutine output_put_map

  subroutine output_put_series(out, name, rec, value, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(in) :: name
    integer, intent(in) :: rec
    real(p), intent(in) :: value
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: k, ierr
    k = find(out, name, .false., errmsg, errflg)
    if (errflg /= 0) return
    ierr = nf90_put_var(out%ncid, out%varids(k), [value], start=[rec], count=[1])
    if (ierr /= NF90_NOERR) call set_error(errmsg, errflg, 'output: write ' // name // ': ' // &
                                           nf90_strerror(ierr))
  end subroutine output_put_series

  integer function find(out, name, is_map, errmsg, errflg) result(k)
    type(output_t), intent(in) :: out
    character(len=*), intent(in) :: name
    logical, intent(in) :: is_map
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    errflg = 0
    errmsg = ''
    do k = 1, out%nvar
      if (out%names(k) == name .and. (out%is_map(k) .eqv. is_map)) return
    end do
    k = 0
    call set_error(errmsg, errflg, 'output: variable ' // name // ' was not registered')
  end function find

  subroutine output_close(out, errmsg, errflg)
    type(output_t), intent(inout) :: out
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ierr
    errflg = 0
    errmsg = ''
    if (out%ncid < 0) return
    ierr = nf90_close(out%ncid)
    out%ncid = -1
    if (ierr /= NF90_NOERR) call set_error(errmsg, errflg, 'output: close: ' // nf90_strerror(ierr))
  end subroutine output_close

  !> Message into a buffer of any length (truncated, never overflowing).
  subroutine set_error(errmsg, errflg, text)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    character(len=*), intent(in) :: text
    errflg = 1
    errmsg = text   ! Fortran assignment truncates or pads to len(errmsg)
  end subroutine set_error

end module speedy_output

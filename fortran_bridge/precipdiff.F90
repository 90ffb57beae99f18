!> Fortran face of precipdiff: a CCPP-shaped parameterization that turns the
!! ESM's large-scale state into fine-scale precipitation ensembles.
!!
!! Every entry point ends with `errmsg, errflg` (set to '' / 0 on entry, a
!! message and a non-zero pd_status code on failure) and never stops the
!! host or writes to stdout. Plugins are named by opaque integer handles, so a
!! process may run several instances. Declare handles as
!! `integer :: handle = PD_NO_HANDLE`.
!!
!! Array layout: 2-D fields are (nlon, nlat), 3-D fields (nlon, nlat, nlev);
!! they are handed to Python as zero-copy views (no transpose, no copy).
!! Input fields may be real(4) or real(8) (generic interfaces); outputs are
!! real(8). See docs/bridge.md for the table of arguments, standard names and units.
module precipdiff
  use, intrinsic :: iso_c_binding, only: c_int, c_double, c_float, c_char, c_ptr, &
       c_null_char, c_null_ptr, c_loc
  implicit none
  private

  public :: precipdiff_init, precipdiff_run, precipdiff_set_field, precipdiff_step, &
       precipdiff_get_output, precipdiff_finalize, precipdiff_shapes, &
       precipdiff_fine_coords, precipdiff_required_fields, precipdiff_write_restart, &
       precipdiff_read_restart, precipdiff_ready, precipdiff_version, pd_int_str

  !> Double-precision kind used for times, coordinates and outputs.
  integer, parameter, public :: pd_r8 = c_double
  !> Single-precision kind accepted for input fields and coordinates.
  integer, parameter, public :: pd_r4 = c_float

  !> Handle value that never names a live plugin.
  integer, parameter, public :: PD_NO_HANDLE = 0
  !> Recommended length of errmsg (longer messages are truncated).
  integer, parameter, public :: PD_ERRMSG_LEN = 1024

  ! Status codes (same values as enum pd_status in precipdiff.h).
  integer, parameter, public :: PD_OK = 0
  integer, parameter, public :: PD_ERR_PYTHON_INIT = 1
  integer, parameter, public :: PD_ERR_NOT_INITIALISED = 2
  integer, parameter, public :: PD_ERR_BAD_HANDLE = 3
  integer, parameter, public :: PD_ERR_INVALID_ARGUMENT = 4
  integer, parameter, public :: PD_ERR_CONFIG = 5
  integer, parameter, public :: PD_ERR_BUNDLE = 6
  integer, parameter, public :: PD_ERR_INPUT = 7
  integer, parameter, public :: PD_ERR_GRID = 8
  integer, parameter, public :: PD_ERR_DEVICE = 9
  integer, parameter, public :: PD_ERR_PYTHON = 10
  integer, parameter, public :: PD_ERR_ALREADY_INITIALISED = 11
  integer, parameter, public :: PD_ERR_INTERNAL = 12

  ! What the communicator passed to pd_plugin_create is (has_comm in precipdiff.h).
  integer(c_int), parameter :: PD_COMM_RANK = 1     !! labels messages with the rank
  integer(c_int), parameter :: PD_COMM_MEMBERS = 2  !! members split across its ranks

  !> Create a plugin instance: coordinates in real(8) or real(4).
  interface precipdiff_init
    module procedure precipdiff_init_r8, precipdiff_init_r4
  end interface precipdiff_init

  !> Feed one field by name: 2-D (nlon, nlat) or 3-D (nlon, nlat, nlev) with
  !! pressure, real(4) or real(8).
  interface precipdiff_set_field
    module procedure set_field_2d_r4, set_field_2d_r8, set_field_3d_r4, set_field_3d_r8
  end interface precipdiff_set_field

  !> One timestep: optionally feed a stack of 2-D fields by name, advance the
  !! clock, and copy the output when a window closed.
  interface precipdiff_run
    module procedure run_preset, run_fields_r4, run_fields_r8
  end interface precipdiff_run

  interface
    integer(c_int) function pd_version(major, minor, patch) bind(c, name="pd_version")
      import :: c_int
      integer(c_int), intent(out) :: major, minor, patch
    end function pd_version

    integer(c_int) function pd_ready() bind(c, name="pd_ready")
      import :: c_int
    end function pd_ready

    integer(c_int) function pd_last_error(buf, buflen, length) bind(c, name="pd_last_error")
      import :: c_int, c_char
      character(kind=c_char), intent(out) :: buf(*)
      integer(c_int), value :: buflen
      integer(c_int), intent(out) :: length
    end function pd_last_error

    integer(c_int) function pd_plugin_create(nml_path, lon, nlon, lat, nlat, has_comm, comm_f, &
         start_lon, start_lat, nlon_global, nlat_global, handle) bind(c, name="pd_plugin_create")
      import :: c_int, c_char, c_double
      character(kind=c_char), intent(in) :: nml_path(*)
      real(c_double), intent(in) :: lon(*), lat(*)
      integer(c_int), value :: nlon, nlat, has_comm, comm_f, start_lon, start_lat, &
           nlon_global, nlat_global
      integer(c_int), intent(out) :: handle
    end function pd_plugin_create

    integer(c_int) function pd_plugin_set_field_f32(handle, name, values, nlon, nlat, nlev, &
         pressure) bind(c, name="pd_plugin_set_field_f32")
      import :: c_int, c_char, c_ptr
      integer(c_int), value :: handle, nlon, nlat, nlev
      character(kind=c_char), intent(in) :: name(*)
      type(c_ptr), value :: values, pressure
    end function pd_plugin_set_field_f32

    integer(c_int) function pd_plugin_set_field_f64(handle, name, values, nlon, nlat, nlev, &
         pressure) bind(c, name="pd_plugin_set_field_f64")
      import :: c_int, c_char, c_ptr
      integer(c_int), value :: handle, nlon, nlat, nlev
      character(kind=c_char), intent(in) :: name(*)
      type(c_ptr), value :: values, pressure
    end function pd_plugin_set_field_f64

    integer(c_int) function pd_plugin_step(handle, model_time_s, dt_s, ready) &
         bind(c, name="pd_plugin_step")
      import :: c_int, c_double
      integer(c_int), value :: handle
      real(c_double), value :: model_time_s, dt_s
      integer(c_int), intent(out) :: ready
    end function pd_plugin_step

    integer(c_int) function pd_plugin_get_output(handle, pr_fine, nlon_fine, nlat_fine, &
         pr_model, nlon, nlat) bind(c, name="pd_plugin_get_output")
      import :: c_int, c_ptr
      integer(c_int), value :: handle, nlon_fine, nlat_fine, nlon, nlat
      type(c_ptr), value :: pr_fine, pr_model
    end function pd_plugin_get_output

    integer(c_int) function pd_plugin_shapes(handle, nlon, nlat, nlon_fine, nlat_fine) &
         bind(c, name="pd_plugin_shapes")
      import :: c_int
      integer(c_int), value :: handle
      integer(c_int), intent(out) :: nlon, nlat, nlon_fine, nlat_fine
    end function pd_plugin_shapes

    integer(c_int) function pd_plugin_fine_coords(handle, lon_fine, nlon_fine, lat_fine, &
         nlat_fine) bind(c, name="pd_plugin_fine_coords")
      import :: c_int, c_double
      integer(c_int), value :: handle, nlon_fine, nlat_fine
      real(c_double), intent(out) :: lon_fine(*), lat_fine(*)
    end function pd_plugin_fine_coords

    integer(c_int) function pd_plugin_required_fields(handle, buf, buflen, count) &
         bind(c, name="pd_plugin_required_fields")
      import :: c_int, c_char
      integer(c_int), value :: handle, buflen
      character(kind=c_char), intent(out) :: buf(*)
      integer(c_int), intent(out) :: count
    end function pd_plugin_required_fields

    integer(c_int) function pd_plugin_write_restart(handle, path) &
         bind(c, name="pd_plugin_write_restart")
      import :: c_int, c_char
      integer(c_int), value :: handle
      character(kind=c_char), intent(in) :: path(*)
    end function pd_plugin_write_restart

    integer(c_int) function pd_plugin_read_restart(handle, path) &
         bind(c, name="pd_plugin_read_restart")
      import :: c_int, c_char
      integer(c_int), value :: handle
      character(kind=c_char), intent(in) :: path(*)
    end function pd_plugin_read_restart

    integer(c_int) function pd_plugin_destroy(handle) bind(c, name="pd_plugin_destroy")
      import :: c_int
      integer(c_int), value :: handle
    end function pd_plugin_destroy
  end interface

contains

  ! ---------------------------------------------------------------------------------
  ! Helpers
  ! ---------------------------------------------------------------------------------

  !> Copy the library's last error message into errmsg and set errflg.
  subroutine fetch_error(status, errmsg, errflg)
    integer(c_int), intent(in) :: status     !! non-zero pd_status from the C call
    character(len=*), intent(inout) :: errmsg !! receives the message (truncated to len(errmsg))
    integer, intent(inout) :: errflg         !! receives status
    character(kind=c_char) :: buf(PD_ERRMSG_LEN)
    integer(c_int) :: n, ignored
    integer :: i
    errflg = int(status)
    ignored = pd_last_error(buf, int(size(buf), c_int), n)
    errmsg = ''
    do i = 1, min(len(errmsg), size(buf) - 1)
      if (buf(i) == c_null_char) exit
      errmsg(i:i) = buf(i)
    end do
    if (len_trim(errmsg) == 0) then
      errmsg = 'precipdiff: call failed with status '//pd_int_str(int(status))
    end if
  end subroutine fetch_error

  !> Set errmsg/errflg for an error detected on the Fortran side.
  subroutine set_error(code, message, errmsg, errflg)
    integer, intent(in) :: code              !! pd_status code to report
    character(len=*), intent(in) :: message  !! text of the message
    character(len=*), intent(inout) :: errmsg !! receives message
    integer, intent(inout) :: errflg         !! receives code
    errflg = code
    errmsg = message
  end subroutine set_error

  !> Decimal text of an integer, for messages built by concatenation. Messages are
  !! never written with an internal write into errmsg: that overflows a short buffer
  !! ("End of record" kills the host), while an assignment truncates safely.
  pure function pd_int_str(i) result(s)
    integer, intent(in) :: i              !! the integer
    character(len=:), allocatable :: s    !! its decimal text, no blanks
    character(len=24) :: buf
    write (buf, '(i0)') i
    s = trim(buf)
  end function pd_int_str

  !> NUL-terminated C string from a Fortran string (trailing blanks removed).
  pure function c_string(s) result(cs)
    character(len=*), intent(in) :: s !! Fortran string
    character(kind=c_char, len=len_trim(s) + 1) :: cs
    cs = trim(s)//c_null_char
  end function c_string

  ! ---------------------------------------------------------------------------------
  ! Life cycle
  ! ---------------------------------------------------------------------------------

  !> Library version and readiness of the embedded Python server.
  !! Starts the interpreter if needed; errflg /= 0 when Python or the precipdiff
  !! package cannot be started (the message says why).
  subroutine precipdiff_ready(errmsg, errflg)
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    status = pd_ready()
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine precipdiff_ready

  !> Version of the linked libprecipdiff.
  subroutine precipdiff_version(major, minor, patch)
    integer, intent(out) :: major !! major version
    integer, intent(out) :: minor !! minor version
    integer, intent(out) :: patch !! patch version
    integer(c_int) :: ma, mi, pa, status
    status = pd_version(ma, mi, pa)
    major = int(ma)
    minor = int(mi)
    patch = int(pa)
  end subroutine precipdiff_version

  !> Create a plugin instance (real(8) coordinates). See precipdiff_init.
  subroutine precipdiff_init_r8(handle, nml_file, lon, lat, errmsg, errflg, comm, start, &
       global_shape, member_comm)
    integer, intent(inout) :: handle            !! plugin handle; PD_NO_HANDLE on entry, > 0 on success
    character(len=*), intent(in) :: nml_file    !! path of the namelist file holding &precipdiff_nml
    real(pd_r8), intent(in) :: lon(:)           !! longitude of the ESM grid cell centres (degrees_east)
    real(pd_r8), intent(in) :: lat(:)           !! latitude of the ESM grid cell centres (degrees_north)
    character(len=*), intent(out) :: errmsg     !! error message ('' on success)
    integer, intent(out) :: errflg              !! error flag (0 on success, a pd_status code otherwise)
    integer, intent(in), optional :: comm       !! MPI communicator (Fortran handle; comm%MPI_VAL with mpi_f08)
    integer, intent(in), optional :: start(2)   !! 1-based (lon, lat) index of this subdomain in the global grid
    integer, intent(in), optional :: global_shape(2) !! (nlon, nlat) of the global grid
    integer, intent(in), optional :: member_comm !! inference ranks sharing the ensemble (precipdiff_mpi's per-node mode; instead of comm)
    real(c_double), allocatable :: clon(:), clat(:)
    integer(c_int) :: status, has_comm, comm_f, chandle
    integer :: s(2), g(2)
    errmsg = ''
    errflg = 0
    has_comm = 0
    comm_f = 0
    if (present(comm)) then
      has_comm = PD_COMM_RANK
      comm_f = int(comm, c_int)
    end if
    if (present(member_comm)) then
      ! The explicit contract of the per-node mode: members are split across this
      ! communicator's ranks (the Python side needs mpi4py for it, and says so).
      has_comm = PD_COMM_MEMBERS
      comm_f = int(member_comm, c_int)
    end if
    s = [1, 1]
    g = [size(lon), size(lat)]
    if (present(start)) s = start
    if (present(global_shape)) g = global_shape
    ! Double init of a live handle: refuse and keep the running instance.
    if (handle /= PD_NO_HANDLE) then
      if (handle_is_live(handle)) then
        errmsg = 'precipdiff_init: handle '//pd_int_str(handle)// &
             ' is already initialised; call precipdiff_finalize first'
        errflg = PD_ERR_ALREADY_INITIALISED
        return
      end if
    end if
    ! Contiguous copies: the coordinate arrays are tiny and may be strided sections.
    allocate (clon(size(lon)), clat(size(lat)))
    clon(:) = real(lon, c_double)
    clat(:) = real(lat, c_double)
    status = pd_plugin_create(c_string(nml_file), clon, int(size(clon), c_int), clat, &
         int(size(clat), c_int), has_comm, comm_f, int(s(1), c_int), int(s(2), c_int), &
         int(g(1), c_int), int(g(2), c_int), chandle)
    if (status /= PD_OK) then
      handle = PD_NO_HANDLE
      call fetch_error(status, errmsg, errflg)
      return
    end if
    handle = int(chandle)
  end subroutine precipdiff_init_r8

  !> Create a plugin instance (real(4) coordinates). See precipdiff_init.
  subroutine precipdiff_init_r4(handle, nml_file, lon, lat, errmsg, errflg, comm, start, &
       global_shape, member_comm)
    integer, intent(inout) :: handle            !! plugin handle; PD_NO_HANDLE on entry, > 0 on success
    character(len=*), intent(in) :: nml_file    !! path of the namelist file holding &precipdiff_nml
    real(pd_r4), intent(in) :: lon(:)           !! longitude of the ESM grid cell centres (degrees_east)
    real(pd_r4), intent(in) :: lat(:)           !! latitude of the ESM grid cell centres (degrees_north)
    character(len=*), intent(out) :: errmsg     !! error message ('' on success)
    integer, intent(out) :: errflg              !! error flag (0 on success, a pd_status code otherwise)
    integer, intent(in), optional :: comm       !! MPI communicator (Fortran handle; comm%MPI_VAL with mpi_f08)
    integer, intent(in), optional :: start(2)   !! 1-based (lon, lat) index of this subdomain in the global grid
    integer, intent(in), optional :: global_shape(2) !! (nlon, nlat) of the global grid
    integer, intent(in), optional :: member_comm !! inference ranks sharing the ensemble (see precipdiff_init_r8)
    call precipdiff_init_r8(handle, nml_file, real(lon, pd_r8), real(lat, pd_r8), errmsg, &
         errflg, comm, start, global_shape, member_comm)
  end subroutine precipdiff_init_r4

  !> True when handle names a live plugin instance.
  logical function handle_is_live(handle)
    integer, intent(in) :: handle !! handle to test
    integer(c_int) :: a, b, c, d
    handle_is_live = pd_plugin_shapes(int(handle, c_int), a, b, c, d) == PD_OK
  end function handle_is_live

  !> Release a plugin instance. Idempotent: finalizing PD_NO_HANDLE does nothing.
  !! On return handle is PD_NO_HANDLE.
  subroutine precipdiff_finalize(handle, errmsg, errflg)
    integer, intent(inout) :: handle        !! plugin handle; PD_NO_HANDLE on return
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    if (handle == PD_NO_HANDLE) return
    status = pd_plugin_destroy(int(handle, c_int))
    handle = PD_NO_HANDLE
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine precipdiff_finalize

  ! ---------------------------------------------------------------------------------
  ! Fields
  ! ---------------------------------------------------------------------------------

  !> Feed a 2-D real(4) field by name.
  subroutine set_field_2d_r4(handle, name, values, errmsg, errflg)
    integer, intent(in) :: handle                   !! plugin handle
    character(len=*), intent(in) :: name            !! variable name the bundle knows (e.g. 'psl')
    real(pd_r4), intent(in), target, contiguous :: values(:, :) !! field on the ESM grid (nlon, nlat), units of the variable
    character(len=*), intent(out) :: errmsg         !! error message ('' on success)
    integer, intent(out) :: errflg                  !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    status = pd_plugin_set_field_f32(int(handle, c_int), c_string(name), c_loc(values), &
         int(size(values, 1), c_int), int(size(values, 2), c_int), 0_c_int, c_null_ptr)
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine set_field_2d_r4

  !> Feed a 2-D real(8) field by name.
  subroutine set_field_2d_r8(handle, name, values, errmsg, errflg)
    integer, intent(in) :: handle                   !! plugin handle
    character(len=*), intent(in) :: name            !! variable name the bundle knows (e.g. 'psl')
    real(pd_r8), intent(in), target, contiguous :: values(:, :) !! field on the ESM grid (nlon, nlat), units of the variable
    character(len=*), intent(out) :: errmsg         !! error message ('' on success)
    integer, intent(out) :: errflg                  !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    status = pd_plugin_set_field_f64(int(handle, c_int), c_string(name), c_loc(values), &
         int(size(values, 1), c_int), int(size(values, 2), c_int), 0_c_int, c_null_ptr)
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine set_field_2d_r8

  !> Feed a 3-D real(4) field with its layer pressure; the plugin interpolates to
  !! the pressure level the bundle needs (e.g. 'hus' -> hus850).
  subroutine set_field_3d_r4(handle, name, values, pressure, errmsg, errflg)
    integer, intent(in) :: handle                   !! plugin handle
    character(len=*), intent(in) :: name            !! variable name (e.g. 'hus', 'ua', 'va')
    real(pd_r4), intent(in), target, contiguous :: values(:, :, :)   !! field (nlon, nlat, nlev)
    real(pd_r4), intent(in), target, contiguous :: pressure(:, :, :) !! air pressure of each value (nlon, nlat, nlev), Pa
    character(len=*), intent(out) :: errmsg         !! error message ('' on success)
    integer, intent(out) :: errflg                  !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    if (any(shape(pressure) /= shape(values))) then
      call set_error(PD_ERR_INVALID_ARGUMENT, 'precipdiff_set_field: pressure of field "' &
           //trim(name)//'" must have the same shape as the field', errmsg, errflg)
      return
    end if
    status = pd_plugin_set_field_f32(int(handle, c_int), c_string(name), c_loc(values), &
         int(size(values, 1), c_int), int(size(values, 2), c_int), &
         int(size(values, 3), c_int), c_loc(pressure))
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine set_field_3d_r4

  !> Feed a 3-D real(8) field with its layer pressure.
  subroutine set_field_3d_r8(handle, name, values, pressure, errmsg, errflg)
    integer, intent(in) :: handle                   !! plugin handle
    character(len=*), intent(in) :: name            !! variable name (e.g. 'hus', 'ua', 'va')
    real(pd_r8), intent(in), target, contiguous :: values(:, :, :)   !! field (nlon, nlat, nlev)
    real(pd_r8), intent(in), target, contiguous :: pressure(:, :, :) !! air pressure of each value (nlon, nlat, nlev), Pa
    character(len=*), intent(out) :: errmsg         !! error message ('' on success)
    integer, intent(out) :: errflg                  !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    if (any(shape(pressure) /= shape(values))) then
      call set_error(PD_ERR_INVALID_ARGUMENT, 'precipdiff_set_field: pressure of field "' &
           //trim(name)//'" must have the same shape as the field', errmsg, errflg)
      return
    end if
    status = pd_plugin_set_field_f64(int(handle, c_int), c_string(name), c_loc(values), &
         int(size(values, 1), c_int), int(size(values, 2), c_int), &
         int(size(values, 3), c_int), c_loc(pressure))
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine set_field_3d_r8

  ! ---------------------------------------------------------------------------------
  ! Time stepping and output
  ! ---------------------------------------------------------------------------------

  !> Advance the plugin clock without copying output.
  subroutine precipdiff_step(handle, model_time, dt, ready, errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    real(pd_r8), intent(in) :: model_time   !! model time at the end of this step, s since the reference time
    real(pd_r8), intent(in) :: dt           !! timestep length, s
    logical, intent(out) :: ready           !! true when an accumulation window closed and output is new
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status, cready
    errmsg = ''
    errflg = 0
    ready = .false.
    status = pd_plugin_step(int(handle, c_int), real(model_time, c_double), &
         real(dt, c_double), cready)
    if (status /= PD_OK) then
      call fetch_error(status, errmsg, errflg)
      return
    end if
    ready = cready /= 0
  end subroutine precipdiff_step

  !> Copy the latest output (errflg = PD_ERR_INPUT when none is ready yet).
  subroutine precipdiff_get_output(handle, pr_fine, pr_model, errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    real(pd_r8), intent(inout), target, contiguous :: pr_fine(:, :)  !! precipitation on the fine grid (nlon_fine, nlat_fine), kg m-2 s-1 (namelist output_units)
    real(pd_r8), intent(inout), target, contiguous :: pr_model(:, :) !! fine precipitation averaged back to the ESM grid (nlon, nlat), same units
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    status = pd_plugin_get_output(int(handle, c_int), c_loc(pr_fine), &
         int(size(pr_fine, 1), c_int), int(size(pr_fine, 2), c_int), c_loc(pr_model), &
         int(size(pr_model, 1), c_int), int(size(pr_model, 2), c_int))
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine precipdiff_get_output

  !> One timestep using fields already fed with precipdiff_set_field: advance the
  !! clock; when a window closes, fill pr_fine and pr_model and set ready.
  !! When ready is false the outputs are left unchanged.
  subroutine run_preset(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    real(pd_r8), intent(in) :: model_time   !! model time at the end of this step, s since the reference time
    real(pd_r8), intent(in) :: dt           !! timestep length, s
    real(pd_r8), intent(inout), target, contiguous :: pr_fine(:, :)  !! precipitation on the fine grid (nlon_fine, nlat_fine), kg m-2 s-1 (namelist output_units)
    real(pd_r8), intent(inout), target, contiguous :: pr_model(:, :) !! fine precipitation averaged back to the ESM grid (nlon, nlat), same units
    logical, intent(out) :: ready           !! true when this call filled pr_fine and pr_model
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    call precipdiff_step(handle, model_time, dt, ready, errmsg, errflg)
    if (errflg /= 0 .or. .not. ready) return
    call precipdiff_get_output(handle, pr_fine, pr_model, errmsg, errflg)
    if (errflg /= 0) ready = .false.
  end subroutine run_preset

  !> One timestep with the fields given as a stack of 2-D real(4) fields.
  subroutine run_fields_r4(handle, model_time, dt, names, fields, pr_fine, pr_model, ready, &
       errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    real(pd_r8), intent(in) :: model_time   !! model time at the end of this step, s since the reference time
    real(pd_r8), intent(in) :: dt           !! timestep length, s
    character(len=*), intent(in) :: names(:) !! name of each field (nfield), e.g. ['hus850', 'psl   ']
    real(pd_r4), intent(in), target, contiguous :: fields(:, :, :) !! fields (nlon, nlat, nfield)
    real(pd_r8), intent(inout), target, contiguous :: pr_fine(:, :)  !! precipitation on the fine grid (nlon_fine, nlat_fine)
    real(pd_r8), intent(inout), target, contiguous :: pr_model(:, :) !! precipitation on the ESM grid (nlon, nlat)
    logical, intent(out) :: ready           !! true when this call filled pr_fine and pr_model
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer :: k
    ready = .false.
    errmsg = ''
    errflg = 0
    if (size(names) /= size(fields, 3)) then
      errmsg = 'precipdiff_run: '//pd_int_str(size(names))//' names given for '// &
           pd_int_str(size(fields, 3))//' fields (third dimension of fields)'
      errflg = PD_ERR_INVALID_ARGUMENT
      return
    end if
    do k = 1, size(names)
      call set_field_2d_r4(handle, names(k), fields(:, :, k), errmsg, errflg)
      if (errflg /= 0) return
    end do
    call run_preset(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, errflg)
  end subroutine run_fields_r4

  !> One timestep with the fields given as a stack of 2-D real(8) fields.
  subroutine run_fields_r8(handle, model_time, dt, names, fields, pr_fine, pr_model, ready, &
       errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    real(pd_r8), intent(in) :: model_time   !! model time at the end of this step, s since the reference time
    real(pd_r8), intent(in) :: dt           !! timestep length, s
    character(len=*), intent(in) :: names(:) !! name of each field (nfield), e.g. ['hus850', 'psl   ']
    real(pd_r8), intent(in), target, contiguous :: fields(:, :, :) !! fields (nlon, nlat, nfield)
    real(pd_r8), intent(inout), target, contiguous :: pr_fine(:, :)  !! precipitation on the fine grid (nlon_fine, nlat_fine)
    real(pd_r8), intent(inout), target, contiguous :: pr_model(:, :) !! precipitation on the ESM grid (nlon, nlat)
    logical, intent(out) :: ready           !! true when this call filled pr_fine and pr_model
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer :: k
    ready = .false.
    errmsg = ''
    errflg = 0
    if (size(names) /= size(fields, 3)) then
      errmsg = 'precipdiff_run: '//pd_int_str(size(names))//' names given for '// &
           pd_int_str(size(fields, 3))//' fields (third dimension of fields)'
      errflg = PD_ERR_INVALID_ARGUMENT
      return
    end if
    do k = 1, size(names)
      call set_field_2d_r8(handle, names(k), fields(:, :, k), errmsg, errflg)
      if (errflg /= 0) return
    end do
    call run_preset(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, errflg)
  end subroutine run_fields_r8

  ! ---------------------------------------------------------------------------------
  ! Queries and restarts
  ! ---------------------------------------------------------------------------------

  !> Shapes of the ESM grid and of the fine output grid, to allocate outputs.
  subroutine precipdiff_shapes(handle, nlon, nlat, nlon_fine, nlat_fine, errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    integer, intent(out) :: nlon            !! number of ESM longitudes
    integer, intent(out) :: nlat            !! number of ESM latitudes
    integer, intent(out) :: nlon_fine       !! number of fine-grid longitudes
    integer, intent(out) :: nlat_fine       !! number of fine-grid latitudes
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status, a, b, c, d
    errmsg = ''
    errflg = 0
    nlon = 0
    nlat = 0
    nlon_fine = 0
    nlat_fine = 0
    status = pd_plugin_shapes(int(handle, c_int), a, b, c, d)
    if (status /= PD_OK) then
      call fetch_error(status, errmsg, errflg)
      return
    end if
    nlon = int(a)
    nlat = int(b)
    nlon_fine = int(c)
    nlat_fine = int(d)
  end subroutine precipdiff_shapes

  !> Coordinates of the fine output grid.
  subroutine precipdiff_fine_coords(handle, lon_fine, lat_fine, errmsg, errflg)
    integer, intent(in) :: handle             !! plugin handle
    real(pd_r8), intent(out) :: lon_fine(:)   !! fine-grid longitudes (nlon_fine), degrees_east
    real(pd_r8), intent(out) :: lat_fine(:)   !! fine-grid latitudes (nlat_fine), degrees_north
    character(len=*), intent(out) :: errmsg   !! error message ('' on success)
    integer, intent(out) :: errflg            !! error flag (0 on success, a pd_status code otherwise)
    real(c_double), allocatable :: clon(:), clat(:)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    lon_fine = 0.0_pd_r8
    lat_fine = 0.0_pd_r8
    allocate (clon(size(lon_fine)), clat(size(lat_fine)))
    status = pd_plugin_fine_coords(int(handle, c_int), clon, int(size(clon), c_int), clat, &
         int(size(clat), c_int))
    if (status /= PD_OK) then
      call fetch_error(status, errmsg, errflg)
      return
    end if
    lon_fine = clon
    lat_fine = clat
  end subroutine precipdiff_fine_coords

  !> Names of the fields the bundle needs (feed each with precipdiff_set_field).
  subroutine precipdiff_required_fields(handle, names, nnames, errmsg, errflg)
    integer, intent(in) :: handle             !! plugin handle
    character(len=*), intent(inout) :: names(:) !! receives the first min(size(names), nnames) names
    integer, intent(out) :: nnames            !! number of fields the bundle needs
    character(len=*), intent(out) :: errmsg   !! error message ('' on success)
    integer, intent(out) :: errflg            !! error flag (0 on success, a pd_status code otherwise)
    character(kind=c_char) :: buf(4096)
    integer(c_int) :: status, count
    integer :: i, k, pos
    errmsg = ''
    errflg = 0
    nnames = 0
    status = pd_plugin_required_fields(int(handle, c_int), buf, int(size(buf), c_int), count)
    if (status /= PD_OK) then
      call fetch_error(status, errmsg, errflg)
      return
    end if
    nnames = int(count)
    names = ''
    k = 1
    pos = 0
    do i = 1, size(buf)
      if (buf(i) == c_null_char) exit
      if (buf(i) == ' ') then
        k = k + 1
        pos = 0
        cycle
      end if
      if (k > size(names)) exit
      pos = pos + 1
      if (pos <= len(names(k))) names(k)(pos:pos) = buf(i)
    end do
  end subroutine precipdiff_required_fields

  !> Write the plugin state (accumulators, clock, random streams) to a restart file.
  subroutine precipdiff_write_restart(handle, path, errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    character(len=*), intent(in) :: path    !! restart file path
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    status = pd_plugin_write_restart(int(handle, c_int), c_string(path))
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine precipdiff_write_restart

  !> Restore the plugin state from a restart file written by precipdiff_write_restart.
  subroutine precipdiff_read_restart(handle, path, errmsg, errflg)
    integer, intent(in) :: handle           !! plugin handle
    character(len=*), intent(in) :: path    !! restart file path
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success, a pd_status code otherwise)
    integer(c_int) :: status
    errmsg = ''
    errflg = 0
    status = pd_plugin_read_restart(int(handle, c_int), c_string(path))
    if (status /= PD_OK) call fetch_error(status, errmsg, errflg)
  end subroutine precipdiff_read_restart

end module precipdiff

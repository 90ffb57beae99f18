!> Parallel environment of the toy ESM: latitude-band decomposition, halo
!> exchange, reductions, gathers for output, and the plugin calls.
!>
!> Built twice from this one source: without TOY_MPI (program toy_esm, one
!> process owning the whole globe, module `precipdiff`), and with TOY_MPI
!> (program toy_esm_mpi: each MPI rank owns a band of latitude rows and the
!> plugin is driven through module `precipdiff_mpi`, which gathers the fields to
!> one inference rank). The physics sees the same band arrays in both builds, so
!> a run gives the same fields on any number of ranks.
module toy_parallel
  use toy_physics, only: dp
#ifdef TOY_MPI
  use mpi_f08
  use precipdiff_mpi, only: precipdiff_mpi_init, precipdiff_mpi_set_field, precipdiff_mpi_run, &
       precipdiff_mpi_finalize, precipdiff_mpi_shapes, precipdiff_mpi_fine_coords, &
       precipdiff_mpi_required_fields, precipdiff_mpi_write_restart, precipdiff_mpi_read_restart
#endif
  use precipdiff, only: precipdiff_init, precipdiff_run, precipdiff_set_field, &
       precipdiff_finalize, precipdiff_shapes, precipdiff_fine_coords, &
       precipdiff_required_fields, precipdiff_write_restart, precipdiff_read_restart, &
       PD_NO_HANDLE
  implicit none
  private

  integer, public :: my_rank = 0     !! rank of this process (0 without MPI)
  integer, public :: n_ranks = 1     !! number of processes
  integer, public :: j_first = 1     !! first global latitude row of this band
  integer, public :: n_band = 0      !! rows in this band
  integer, allocatable :: band_first(:), band_rows(:)   ! per rank
#ifdef TOY_MPI
  type(MPI_Comm) :: comm
#endif

  public :: par_init, par_decompose, par_finalize, par_abort, par_halo, par_sum, par_max, par_min
  public :: par_gather, par_scatter, par_gather_fine, par_bcast_int
  public :: plug_init, plug_shapes, plug_fine_coords, plug_required, plug_set, plug_run
  public :: plug_write_restart, plug_read_restart, plug_finalize

contains

  !> Start the parallel environment.
  subroutine par_init()
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Init(ierr)
    call MPI_Comm_dup(MPI_COMM_WORLD, comm, ierr)
    call MPI_Comm_rank(comm, my_rank, ierr)
    call MPI_Comm_size(comm, n_ranks, ierr)
#endif
  end subroutine par_init

  !> Split nlat rows into n_ranks contiguous bands (the first nlat mod n_ranks get one more).
  subroutine par_decompose(nlat, errmsg, errflg)
    integer, intent(in) :: nlat              !! global rows
    character(len=*), intent(out) :: errmsg  !! error message
    integer, intent(out) :: errflg           !! error flag
    integer :: r, base, extra
    errmsg = ''
    errflg = 0
    if (nlat < n_ranks) then
      write (errmsg, '(a,i0,a,i0,a)') 'nlat = ', nlat, ' rows cannot be split over ', n_ranks, ' ranks'
      errflg = 1
      return
    end if
    allocate (band_first(0:n_ranks - 1), band_rows(0:n_ranks - 1))
    base = nlat / n_ranks
    extra = mod(nlat, n_ranks)
    band_first(0) = 1
    do r = 0, n_ranks - 1
      band_rows(r) = base
      if (r < extra) band_rows(r) = base + 1
      if (r > 0) band_first(r) = band_first(r - 1) + band_rows(r - 1)
    end do
    j_first = band_first(my_rank)
    n_band = band_rows(my_rank)
  end subroutine par_decompose

  !> Stop the parallel environment.
  subroutine par_finalize()
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Comm_free(comm, ierr)
    call MPI_Finalize(ierr)
#endif
  end subroutine par_finalize

  !> The host program gives up: every rank stops with status 1.
  subroutine par_abort()
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Abort(comm, 1, ierr)
#endif
    error stop 1
  end subroutine par_abort

  !> Fill the halo rows 0 and nb+1 of a band array from the neighbouring bands
  !> (zero beyond a pole, where no flux crosses).
  subroutine par_halo(a)
    real(dp), intent(inout) :: a(:, 0:)  !! (nlon, 0:nb+1)
    integer :: nb
#ifdef TOY_MPI
    integer :: south, north, ierr, n
    real(dp), allocatable :: sbuf(:), rbuf(:)
#endif
    nb = size(a, 2) - 2
    a(:, 0) = 0.0_dp
    a(:, nb + 1) = 0.0_dp
#ifdef TOY_MPI
    n = size(a, 1)
    south = my_rank - 1
    north = my_rank + 1
    if (south < 0) south = MPI_PROC_NULL
    if (north >= n_ranks) north = MPI_PROC_NULL
    allocate (sbuf(n), rbuf(n))
    ! Northernmost own row to the north neighbour, its southernmost row into halo 0.
    sbuf = a(:, nb)
    rbuf = 0.0_dp
    call MPI_Sendrecv(sbuf, n, MPI_DOUBLE_PRECISION, north, 1, rbuf, n, MPI_DOUBLE_PRECISION, &
                      south, 1, comm, MPI_STATUS_IGNORE, ierr)
    if (south /= MPI_PROC_NULL) a(:, 0) = rbuf
    sbuf = a(:, 1)
    rbuf = 0.0_dp
    call MPI_Sendrecv(sbuf, n, MPI_DOUBLE_PRECISION, south, 2, rbuf, n, MPI_DOUBLE_PRECISION, &
                      north, 2, comm, MPI_STATUS_IGNORE, ierr)
    if (north /= MPI_PROC_NULL) a(:, nb + 1) = rbuf
#endif
  end subroutine par_halo

  !> Sum over all ranks.
  function par_sum(x) result(y)
    real(dp), intent(in) :: x  !! this rank's part
    real(dp) :: y              !! the total, on every rank
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Allreduce(x, y, 1, MPI_DOUBLE_PRECISION, MPI_SUM, comm, ierr)
#else
    y = x
#endif
  end function par_sum

  !> Maximum over all ranks.
  function par_max(x) result(y)
    real(dp), intent(in) :: x  !! this rank's value
    real(dp) :: y              !! the maximum, on every rank
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Allreduce(x, y, 1, MPI_DOUBLE_PRECISION, MPI_MAX, comm, ierr)
#else
    y = x
#endif
  end function par_max

  !> Minimum over all ranks.
  function par_min(x) result(y)
    real(dp), intent(in) :: x  !! this rank's value
    real(dp) :: y              !! the minimum, on every rank
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Allreduce(x, y, 1, MPI_DOUBLE_PRECISION, MPI_MIN, comm, ierr)
#else
    y = x
#endif
  end function par_min

  !> Gather band fields (nlon, nb) into the global field (nlon, nlat) on rank 0.
  subroutine par_gather(band, glob)
    real(dp), intent(in) :: band(:, :)     !! this rank's rows
    real(dp), intent(inout) :: glob(:, :)  !! global field (significant on rank 0)
#ifdef TOY_MPI
    integer :: ierr, nlon
    integer, allocatable :: counts(:), displs(:)
    nlon = size(band, 1)
    allocate (counts(0:n_ranks - 1), displs(0:n_ranks - 1))
    counts(:) = band_rows(:) * nlon
    displs(:) = (band_first(:) - 1) * nlon
    call MPI_Gatherv(band, size(band), MPI_DOUBLE_PRECISION, glob, counts, displs, &
                     MPI_DOUBLE_PRECISION, 0, comm, ierr)
#else
    glob = band
#endif
  end subroutine par_gather

  !> Scatter the global field (nlon, nlat) on rank 0 into each rank's band rows.
  subroutine par_scatter(glob, band)
    real(dp), intent(in) :: glob(:, :)     !! global field (significant on rank 0)
    real(dp), intent(inout) :: band(:, :)  !! this rank's rows
#ifdef TOY_MPI
    integer :: ierr, nlon
    integer, allocatable :: counts(:), displs(:)
    nlon = size(band, 1)
    allocate (counts(0:n_ranks - 1), displs(0:n_ranks - 1))
    counts(:) = band_rows(:) * nlon
    displs(:) = (band_first(:) - 1) * nlon
    call MPI_Scatterv(glob, counts, displs, MPI_DOUBLE_PRECISION, band, size(band), &
                      MPI_DOUBLE_PRECISION, 0, comm, ierr)
#else
    band = glob
#endif
  end subroutine par_scatter

  !> Assemble the fine-grid output on rank 0 from each rank's block (fstart: its
  !> 1-based position in the global fine grid). When every rank holds the whole
  !> fine grid, rank 0's own copy is used.
  subroutine par_gather_fine(block, fstart, glob)
    real(dp), intent(in) :: block(:, :)    !! this rank's fine block
    integer, intent(in) :: fstart(2)       !! its start in the global fine grid
    real(dp), intent(inout) :: glob(:, :)  !! global fine field (significant on rank 0)
#ifdef TOY_MPI
    integer :: ierr, r, hdr(4)
    real(dp), allocatable :: buf(:, :)
    if (size(block, 1) == size(glob, 1) .and. size(block, 2) == size(glob, 2)) then
      if (my_rank == 0) glob = block
      return
    end if
    if (my_rank == 0) then
      glob(fstart(1):fstart(1) + size(block, 1) - 1, fstart(2):fstart(2) + size(block, 2) - 1) = block
      do r = 1, n_ranks - 1
        call MPI_Recv(hdr, 4, MPI_INTEGER, r, 11, comm, MPI_STATUS_IGNORE, ierr)
        allocate (buf(hdr(3), hdr(4)))
        call MPI_Recv(buf, size(buf), MPI_DOUBLE_PRECISION, r, 12, comm, MPI_STATUS_IGNORE, ierr)
        glob(hdr(1):hdr(1) + hdr(3) - 1, hdr(2):hdr(2) + hdr(4) - 1) = buf
        deallocate (buf)
      end do
    else
      hdr = [fstart(1), fstart(2), size(block, 1), size(block, 2)]
      call MPI_Send(hdr, 4, MPI_INTEGER, 0, 11, comm, ierr)
      call MPI_Send(block, size(block), MPI_DOUBLE_PRECISION, 0, 12, comm, ierr)
    end if
#else
    glob(fstart(1):fstart(1) + size(block, 1) - 1, fstart(2):fstart(2) + size(block, 2) - 1) = block
#endif
  end subroutine par_gather_fine

  !> Broadcast an integer from rank 0.
  subroutine par_bcast_int(k)
    integer, intent(inout) :: k  !! value (rank 0's on return)
#ifdef TOY_MPI
    integer :: ierr
    call MPI_Bcast(k, 1, MPI_INTEGER, 0, comm, ierr)
#else
    k = k + 0
#endif
  end subroutine par_bcast_int

  ! ---- the plugin: module precipdiff, or precipdiff_mpi on a decomposed grid ---------

  !> Create the plugin for this rank's band of the global grid.
  subroutine plug_init(handle, nml, lon, lat_band, nlat_global, errmsg, errflg)
    integer, intent(inout) :: handle          !! plugin handle
    character(len=*), intent(in) :: nml       !! namelist with &precipdiff_nml
    real(dp), intent(in) :: lon(:)            !! all longitudes
    real(dp), intent(in) :: lat_band(:)       !! this band's latitudes
    integer, intent(in) :: nlat_global        !! global rows
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag
    handle = PD_NO_HANDLE
#ifdef TOY_MPI
    call precipdiff_mpi_init(handle, nml, lon, lat_band, [1, j_first], [size(lon), nlat_global], &
                             comm, errmsg, errflg)
#else
    if (size(lat_band) /= nlat_global) then
      errmsg = 'plug_init: a serial run owns the whole grid'
      errflg = 1
      return
    end if
    call precipdiff_init(handle, nml, lon, lat_band, errmsg, errflg)
#endif
  end subroutine plug_init

  !> Local and global fine-grid shapes and this rank's fine block start.
  subroutine plug_shapes(handle, nlon, nlat, nlon_f, nlat_f, gfine, fstart, errmsg, errflg)
    integer, intent(in) :: handle              !! plugin handle
    integer, intent(out) :: nlon, nlat         !! this rank's model block
    integer, intent(out) :: nlon_f, nlat_f     !! this rank's fine block
    integer, intent(out) :: gfine(2)           !! global fine shape
    integer, intent(out) :: fstart(2)          !! start of this rank's fine block
    character(len=*), intent(out) :: errmsg    !! error message
    integer, intent(out) :: errflg             !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_shapes(handle, nlon, nlat, nlon_f, nlat_f, errmsg, errflg, &
                               global_fine=gfine, fine_start=fstart)
#else
    call precipdiff_shapes(handle, nlon, nlat, nlon_f, nlat_f, errmsg, errflg)
    gfine = [nlon_f, nlat_f]
    fstart = [1, 1]
#endif
  end subroutine plug_shapes

  !> Coordinates of this rank's fine block.
  subroutine plug_fine_coords(handle, lon_f, lat_f, errmsg, errflg)
    integer, intent(in) :: handle              !! plugin handle
    real(dp), intent(out) :: lon_f(:), lat_f(:)  !! fine-block coordinates
    character(len=*), intent(out) :: errmsg    !! error message
    integer, intent(out) :: errflg             !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_fine_coords(handle, lon_f, lat_f, errmsg, errflg)
#else
    call precipdiff_fine_coords(handle, lon_f, lat_f, errmsg, errflg)
#endif
  end subroutine plug_fine_coords

  !> Names of the fields the bundle needs.
  subroutine plug_required(handle, names, nnames, errmsg, errflg)
    integer, intent(in) :: handle                 !! plugin handle
    character(len=*), intent(inout) :: names(:)   !! the names
    integer, intent(out) :: nnames                !! how many
    character(len=*), intent(out) :: errmsg       !! error message
    integer, intent(out) :: errflg                !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_required_fields(handle, names, nnames, errmsg, errflg)
#else
    call precipdiff_required_fields(handle, names, nnames, errmsg, errflg)
#endif
  end subroutine plug_required

  !> Feed this rank's rows of one 2-D field.
  subroutine plug_set(handle, name, values, errmsg, errflg)
    integer, intent(in) :: handle                             !! plugin handle
    character(len=*), intent(in) :: name                      !! field name
    real(dp), intent(in), contiguous :: values(:, :)          !! (nlon, nb)
    character(len=*), intent(out) :: errmsg                   !! error message
    integer, intent(out) :: errflg                            !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_set_field(handle, name, values, errmsg, errflg)
#else
    call precipdiff_set_field(handle, name, values, errmsg, errflg)
#endif
  end subroutine plug_set

  !> Advance the plugin clock (model_time = end of the step) and collect output.
  subroutine plug_run(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, errflg)
    integer, intent(in) :: handle                          !! plugin handle
    real(dp), intent(in) :: model_time, dt                 !! end of the step, step length (s)
    real(dp), intent(inout), contiguous :: pr_fine(:, :)   !! this rank's fine block
    real(dp), intent(inout), contiguous :: pr_model(:, :)  !! this rank's model rows
    logical, intent(out) :: ready                          !! new output this step
    character(len=*), intent(out) :: errmsg                !! error message
    integer, intent(out) :: errflg                         !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_run(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, errflg)
#else
    call precipdiff_run(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, errflg)
#endif
  end subroutine plug_run

  !> Write the plugin's restart.
  subroutine plug_write_restart(handle, path, errmsg, errflg)
    integer, intent(in) :: handle             !! plugin handle
    character(len=*), intent(in) :: path      !! restart file
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_write_restart(handle, path, errmsg, errflg)
#else
    call precipdiff_write_restart(handle, path, errmsg, errflg)
#endif
  end subroutine plug_write_restart

  !> Read the plugin's restart.
  subroutine plug_read_restart(handle, path, errmsg, errflg)
    integer, intent(in) :: handle             !! plugin handle
    character(len=*), intent(in) :: path      !! restart file
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_read_restart(handle, path, errmsg, errflg)
#else
    call precipdiff_read_restart(handle, path, errmsg, errflg)
#endif
  end subroutine plug_read_restart

  !> Release the plugin.
  subroutine plug_finalize(handle, errmsg, errflg)
    integer, intent(inout) :: handle          !! plugin handle
    character(len=*), intent(out) :: errmsg   !! error message
    integer, intent(out) :: errflg            !! error flag
#ifdef TOY_MPI
    call precipdiff_mpi_finalize(handle, errmsg, errflg)
#else
    call precipdiff_finalize(handle, errmsg, errflg)
#endif
  end subroutine plug_finalize

end module toy_parallel

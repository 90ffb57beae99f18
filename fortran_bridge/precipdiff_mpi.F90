!> MPI layer of precipdiff: one plugin for a domain-decomposed ESM.
!!
!! Every rank of the host communicator passes its own subdomain (a block of
!! the global lon x lat grid given by its 1-based global start and its local
!! coordinate arrays). The layer gathers each field with MPI_Gatherv into the
!! global array on one inference rank, which alone starts Python and runs the
!! plugin of module `precipdiff` on the global grid; the fine-grid and
!! model-grid precipitation are scattered back with MPI_Scatterv. Because the
!! Python side sees exactly the arrays of a single-process run, the output is
!! bit-identical for any number of ranks and any decomposition.
!!
!! Communicators: the host's communicator is duplicated once at init
!! (MPI_Comm_dup), so the layer's messages never mix with the host's; the
!! duplicate gets MPI_ERRORS_RETURN. MPI_COMM_WORLD is never used.
!!
!! Error protocol: every entry point is collective over the communicator
!! and every rank makes the same sequence of collective calls whatever
!! happens, so no rank can hang. Local argument errors and errors of the
!! inference rank are agreed with one MPI_Allreduce (MAXLOC of a failure flag,
!! giving the lowest failing rank) and that rank's errflg and errmsg are
!! broadcast: all ranks return the same errflg /= 0 and a message that starts
!! with "rank N: ". Use the returned handle only with precipdiff_mpi_* routines.
!!
!! Fine-grid decomposition: by default each rank receives the block of the
!! fine grid that covers its subdomain when the fine grid is the global model
!! grid refined r times in both directions; otherwise every rank receives the
!! whole fine grid. The optional fine_start/fine_count arguments of init choose
!! any other block. See docs/scaling.md.
!!
!! Per-node inference (opt-in: init's optional inference = 'per_node'): the
!! lowest rank of each node (MPI_Comm_split_type SHARED of the duplicate, or
!! groups of ranks_per_inference consecutive ranks) is an inference rank. The
!! gathered global fields go to rank 0 and are broadcast over the inference
!! ranks' communicator (named 'precipdiff_inference' and passed to the plugin as
!! precipdiff_init's member_comm); every inference rank
!! runs an identical plugin that generates a contiguous block of the members
!! and exchanges the blocks in member order (Python side, mpi4py), so every
!! inference rank holds the single-rank ensemble bit for bit. Rank 0 scatters
!! the outputs and writes the output stream and restart files. Errors of any
!! inference rank are agreed as above.
module precipdiff_mpi
  use, intrinsic :: iso_fortran_env, only: int64
  use mpi_f08
  use precipdiff, only: precipdiff_init, precipdiff_finalize, precipdiff_set_field, &
       precipdiff_step, precipdiff_get_output, precipdiff_shapes, precipdiff_fine_coords, &
       precipdiff_required_fields, precipdiff_write_restart, precipdiff_read_restart, &
       pd_r4, pd_r8, pd_int_str, PD_NO_HANDLE, PD_ERRMSG_LEN, PD_ERR_INVALID_ARGUMENT, &
       PD_ERR_BAD_HANDLE, PD_ERR_NOT_INITIALISED, PD_ERR_INTERNAL
  implicit none
  private

  public :: precipdiff_mpi_init, precipdiff_mpi_set_field, precipdiff_mpi_run, &
       precipdiff_mpi_step, precipdiff_mpi_get_output, precipdiff_mpi_shapes, &
       precipdiff_mpi_fine_coords, precipdiff_mpi_required_fields, &
       precipdiff_mpi_write_restart, precipdiff_mpi_read_restart, precipdiff_mpi_finalize, &
       precipdiff_mpi_timers, precipdiff_mpi_inference_rank

  !> Create the decomposed plugin; the communicator is a type(MPI_Comm) (mpi_f08)
  !! or an integer handle (`use mpi`, mpif.h).
  interface precipdiff_mpi_init
    module procedure pdm_init_f08, pdm_init_int
  end interface precipdiff_mpi_init

  !> Feed this rank's block of one field: 2-D (nlon_local, nlat_local) or 3-D
  !! with pressure, real(4) or real(8).
  interface precipdiff_mpi_set_field
    module procedure mset_2d_r8, mset_2d_r4, mset_3d_r8, mset_3d_r4
  end interface precipdiff_mpi_set_field

  !> Per-instance state of the MPI layer (same on every rank except where noted).
  type :: mpi_instance
    logical :: live = .false.
    type(MPI_Comm) :: comm                 !! duplicate of the host communicator
    integer :: rank = 0, nranks = 1, root = 0
    logical :: split = .false.             !! per-node mode: several inference ranks
    logical :: infer = .false.             !! this rank runs a plugin
    type(MPI_Comm) :: icomm                !! inference ranks (split mode, inference ranks only)
    integer :: ninfer = 1                  !! number of inference ranks
    integer :: plugin = PD_NO_HANDLE       !! plugin handle (inference rank only)
    integer :: gshape(2) = 0               !! global model grid (nlon, nlat)
    integer :: fshape(2) = 0               !! global fine grid (nlon_fine, nlat_fine)
    integer, allocatable :: starts(:, :), counts(:, :)   !! (2, nranks) model blocks
    integer, allocatable :: fstarts(:, :), fcounts(:, :) !! (2, nranks) fine blocks
    real(pd_r8), allocatable :: lon_fine(:), lat_fine(:) !! global fine coordinates
    real(pd_r8), allocatable :: out_model(:, :), out_fine(:, :) !! global outputs (root)
    real(pd_r8) :: t_gather = 0, t_python = 0, t_scatter = 0, t_sync = 0
    integer(int64) :: ncalls = 0
  end type mpi_instance

  type(mpi_instance), allocatable, target, save :: instances(:)

  character(len=*), parameter :: ROUTINE_INIT = 'precipdiff_mpi_init'
  !> Name of the inference ranks' communicator (per-node mode), for debuggers and logs;
  !! the plugin is told explicitly with precipdiff_init(..., member_comm=).
  character(len=*), parameter :: INFERENCE_COMM_NAME = 'precipdiff_inference'

contains

  ! ================================================================= helpers

  !> Make errmsg start with "rank N: " (once).
  subroutine label(rank, msg)
    integer, intent(in) :: rank
    character(len=*), intent(inout) :: msg
    character(len=32) :: prefix
    write (prefix, '(a,i0,a)') 'rank ', rank, ': '
    if (index(msg, trim(prefix)) == 1) return
    msg = trim(prefix)//' '//trim(msg)
  end subroutine label

  !> Collective: agree on failure. Each rank brings its own errflg/errmsg; on
  !! return every rank holds the code and message of the lowest failing rank
  !! (unchanged when no rank failed).
  subroutine agree(inst, errmsg, errflg)
    type(mpi_instance), intent(in) :: inst
    character(len=*), intent(inout) :: errmsg
    integer, intent(inout) :: errflg
    integer :: sendb(2), recvb(2), code, ierr
    character(len=PD_ERRMSG_LEN) :: buf
    ! MAXLOC: maximum flag; ties resolve to the lowest rank.
    sendb = [merge(1, 0, errflg /= 0), inst%rank]
    call MPI_Allreduce(sendb, recvb, 1, MPI_2INTEGER, MPI_MAXLOC, inst%comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      call mpi_failed('MPI_Allreduce', ierr, errmsg, errflg)
      return
    end if
    if (recvb(1) == 0) return
    code = errflg
    buf = errmsg
    if (inst%rank == recvb(2)) call label(inst%rank, buf)
    call MPI_Bcast(code, 1, MPI_INTEGER, recvb(2), inst%comm, ierr)
    call MPI_Bcast(buf, len(buf), MPI_CHARACTER, recvb(2), inst%comm, ierr)
    errflg = code
    errmsg = buf
  end subroutine agree

  !> Collective: the inference rank's errflg/errmsg (and one logical) go to every rank.
  subroutine share_root(inst, errmsg, errflg, flag)
    type(mpi_instance), intent(in) :: inst
    character(len=*), intent(inout) :: errmsg
    integer, intent(inout) :: errflg
    logical, intent(inout), optional :: flag
    integer :: b(2), ierr
    character(len=PD_ERRMSG_LEN) :: buf
    b = [errflg, 0]
    if (present(flag)) b(2) = merge(1, 0, flag)
    call MPI_Bcast(b, 2, MPI_INTEGER, inst%root, inst%comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      call mpi_failed('MPI_Bcast', ierr, errmsg, errflg)
      return
    end if
    errflg = b(1)
    if (present(flag)) flag = b(2) /= 0
    if (errflg == 0) return
    buf = errmsg
    if (inst%rank == inst%root) call label(inst%rank, buf)
    call MPI_Bcast(buf, len(buf), MPI_CHARACTER, inst%root, inst%comm, ierr)
    errmsg = buf
  end subroutine share_root

  !> Collective: after a call made on every inference rank, all ranks get the status
  !! (and one logical of the first inference rank). One inference rank: share_root.
  subroutine share_inf(inst, errmsg, errflg, flag)
    type(mpi_instance), intent(in) :: inst
    character(len=*), intent(inout) :: errmsg
    integer, intent(inout) :: errflg
    logical, intent(inout), optional :: flag
    integer :: b, ierr
    if (.not. inst%split) then
      call share_root(inst, errmsg, errflg, flag)
      return
    end if
    call agree(inst, errmsg, errflg)
    if (.not. present(flag)) return
    b = merge(1, 0, flag)
    call MPI_Bcast(b, 1, MPI_INTEGER, inst%root, inst%comm, ierr)
    flag = b /= 0 .and. errflg == 0
  end subroutine share_inf

  !> Free the layer's communicators of an instance.
  subroutine free_comms(inst)
    type(mpi_instance), intent(inout) :: inst
    integer :: ierr
    if (inst%split .and. inst%infer) call MPI_Comm_free(inst%icomm, ierr)
    call MPI_Comm_free(inst%comm, ierr)
  end subroutine free_comms

  !> Broadcast a gathered global array from rank 0 to the other inference ranks.
  subroutine bcast_inf_r8(inst, glob, ierr)
    type(mpi_instance), intent(in) :: inst
    real(pd_r8), intent(inout) :: glob(:, :, :)
    integer, intent(inout) :: ierr
    if (.not. (inst%split .and. inst%infer) .or. ierr /= MPI_SUCCESS) return
    call MPI_Bcast(glob, size(glob), MPI_DOUBLE_PRECISION, 0, inst%icomm, ierr)
  end subroutine bcast_inf_r8

  !> Broadcast a gathered global real(4) array from rank 0 to the other inference ranks.
  subroutine bcast_inf_r4(inst, glob, ierr)
    type(mpi_instance), intent(in) :: inst
    real(pd_r4), intent(inout) :: glob(:, :, :)
    integer, intent(inout) :: ierr
    if (.not. (inst%split .and. inst%infer) .or. ierr /= MPI_SUCCESS) return
    call MPI_Bcast(glob, size(glob), MPI_REAL, 0, inst%icomm, ierr)
  end subroutine bcast_inf_r4

  !> Report a failed MPI call (the duplicate communicator returns errors).
  subroutine mpi_failed(what, ierr, errmsg, errflg)
    character(len=*), intent(in) :: what
    integer, intent(in) :: ierr
    character(len=*), intent(inout) :: errmsg
    integer, intent(inout) :: errflg
    character(len=MPI_MAX_ERROR_STRING) :: text
    integer :: n, ierr2
    call MPI_Error_string(ierr, text, n, ierr2)
    errflg = PD_ERR_INTERNAL
    errmsg = 'precipdiff_mpi: '//what//' failed: '//text(1:max(n, 0))
  end subroutine mpi_failed

  !> Look up a live instance. Local (no communication): a handle that is not live
  !! here cannot name a communicator, so this error is returned on this rank only.
  subroutine lookup(handle, routine, inst, errmsg, errflg)
    integer, intent(in) :: handle
    character(len=*), intent(in) :: routine
    type(mpi_instance), pointer, intent(out) :: inst
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    errmsg = ''
    errflg = 0
    inst => null()
    if (handle == PD_NO_HANDLE) then
      errflg = PD_ERR_NOT_INITIALISED
      errmsg = routine//': handle is PD_NO_HANDLE (call precipdiff_mpi_init first)'
      return
    end if
    if (allocated(instances)) then
      if (handle >= 1 .and. handle <= size(instances)) then
        if (instances(handle)%live) then
          inst => instances(handle)
          return
        end if
      end if
    end if
    errflg = PD_ERR_BAD_HANDLE
    errmsg = routine//': handle '//pd_int_str(handle)// &
         ' is not a live precipdiff_mpi instance (finalised, or not from precipdiff_mpi_init)'
  end subroutine lookup

  !> Index of a free slot in instances (grown on demand).
  integer function new_slot()
    type(mpi_instance), allocatable :: tmp(:)
    integer :: i
    if (.not. allocated(instances)) allocate (instances(4))
    do i = 1, size(instances)
      if (.not. instances(i)%live) then
        new_slot = i
        return
      end if
    end do
    allocate (tmp(2*size(instances)))
    tmp(1:size(instances)) = instances
    new_slot = size(instances) + 1
    call move_alloc(tmp, instances)
  end function new_slot

  !> Counts and displacements of blocks (nlev levels) for Gatherv/Scatterv.
  subroutine block_layout(counts, nlev, sizes, displs)
    integer, intent(in) :: counts(:, :), nlev
    integer, intent(out) :: sizes(:), displs(:)
    integer :: r
    do r = 1, size(counts, 2)
      sizes(r) = counts(1, r)*counts(2, r)*nlev
    end do
    displs(1) = 0
    do r = 2, size(counts, 2)
      displs(r) = displs(r - 1) + sizes(r - 1)
    end do
  end subroutine block_layout

  ! ------------------------------------------------------ gather / scatter

  !> Gather each rank's (c1, c2, nlev) real(8) block into glob (g1, g2, nlev) on root.
  subroutine gather_r8(inst, loc, nloc, nlev, glob, ierr)
    type(mpi_instance), intent(inout) :: inst
    integer, intent(in) :: nloc, nlev
    real(pd_r8), intent(in) :: loc(nloc)
    real(pd_r8), intent(inout) :: glob(:, :, :)
    integer, intent(out) :: ierr
    real(pd_r8), allocatable :: buf(:)
    integer :: sizes(inst%nranks), displs(inst%nranks), r, s(2), c(2), k, p
    real(pd_r8) :: t0
    t0 = MPI_Wtime()
    call block_layout(inst%counts, nlev, sizes, displs)
    if (inst%rank == inst%root) then
      allocate (buf(sum(sizes)))
    else
      allocate (buf(0))
    end if
    call MPI_Gatherv(loc, nloc, MPI_DOUBLE_PRECISION, buf, sizes, displs, &
         MPI_DOUBLE_PRECISION, inst%root, inst%comm, ierr)
    if (ierr == MPI_SUCCESS .and. inst%rank == inst%root) then
      do r = 1, inst%nranks
        s = inst%starts(:, r)
        c = inst%counts(:, r)
        p = displs(r)
        do k = 1, nlev
          glob(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1, k) = &
               reshape(buf(p + 1:p + c(1)*c(2)), c)
          p = p + c(1)*c(2)
        end do
      end do
    end if
    inst%t_gather = inst%t_gather + (MPI_Wtime() - t0)
  end subroutine gather_r8

  !> Gather each rank's (c1, c2, nlev) real(4) block into glob (g1, g2, nlev) on root.
  subroutine gather_r4(inst, loc, nloc, nlev, glob, ierr)
    type(mpi_instance), intent(inout) :: inst
    integer, intent(in) :: nloc, nlev
    real(pd_r4), intent(in) :: loc(nloc)
    real(pd_r4), intent(inout) :: glob(:, :, :)
    integer, intent(out) :: ierr
    real(pd_r4), allocatable :: buf(:)
    integer :: sizes(inst%nranks), displs(inst%nranks), r, s(2), c(2), k, p
    real(pd_r8) :: t0
    t0 = MPI_Wtime()
    call block_layout(inst%counts, nlev, sizes, displs)
    if (inst%rank == inst%root) then
      allocate (buf(sum(sizes)))
    else
      allocate (buf(0))
    end if
    call MPI_Gatherv(loc, nloc, MPI_REAL, buf, sizes, displs, MPI_REAL, inst%root, &
         inst%comm, ierr)
    if (ierr == MPI_SUCCESS .and. inst%rank == inst%root) then
      do r = 1, inst%nranks
        s = inst%starts(:, r)
        c = inst%counts(:, r)
        p = displs(r)
        do k = 1, nlev
          glob(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1, k) = &
               reshape(buf(p + 1:p + c(1)*c(2)), c)
          p = p + c(1)*c(2)
        end do
      end do
    end if
    inst%t_gather = inst%t_gather + (MPI_Wtime() - t0)
  end subroutine gather_r4

  !> Scatter blocks (starts/counts per rank) of glob (root) into loc on every rank.
  subroutine scatter_r8(inst, starts, counts, glob, loc, ierr)
    type(mpi_instance), intent(inout) :: inst
    integer, intent(in) :: starts(:, :), counts(:, :)
    real(pd_r8), intent(in) :: glob(:, :)
    real(pd_r8), intent(inout), contiguous :: loc(:, :)
    integer, intent(out) :: ierr
    real(pd_r8), allocatable :: buf(:)
    integer :: sizes(inst%nranks), displs(inst%nranks), r, s(2), c(2), p
    real(pd_r8) :: t0
    t0 = MPI_Wtime()
    call block_layout(counts, 1, sizes, displs)
    if (inst%rank == inst%root) then
      allocate (buf(sum(sizes)))
      do r = 1, inst%nranks
        s = starts(:, r)
        c = counts(:, r)
        p = displs(r)
        buf(p + 1:p + c(1)*c(2)) = reshape(glob(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1), &
             [c(1)*c(2)])
      end do
    else
      allocate (buf(0))
    end if
    call MPI_Scatterv(buf, sizes, displs, MPI_DOUBLE_PRECISION, loc, size(loc), &
         MPI_DOUBLE_PRECISION, inst%root, inst%comm, ierr)
    inst%t_scatter = inst%t_scatter + (MPI_Wtime() - t0)
  end subroutine scatter_r8

  ! ==================================================================== init

  !> Create the decomposed plugin (mpi_f08 communicator). Collective over comm.
  !!
  !! Every rank passes the coordinates of its own block (lon(nlon_local),
  !! lat(nlat_local)), the block's 1-based (lon, lat) start in the global grid
  !! and the global shape. The blocks must tile the global grid exactly.
  !!
  !! Steps, each made by every rank (errors are agreed before any rank leaves, so
  !! none can hang): open_layer (own communicator, inference rank and mode agreed),
  !! group_inference_ranks (per-node mode), check_block (this rank's arguments),
  !! learn_blocks (every rank learns every block; they must tile the grid),
  !! global_coords (gathered on the inference rank), start_plugin (only the
  !! inference rank(s) start Python), fine_blocks (each rank's part of the fine grid).
  !! On failure a handle that named a live instance on entry keeps it (a second init
  !! is refused, the instance is never orphaned); any other handle is PD_NO_HANDLE.
  subroutine pdm_init_f08(handle, nml_file, lon, lat, start, global_shape, comm, errmsg, &
       errflg, inference_rank, fine_start, fine_count, inference, ranks_per_inference)
    integer, intent(inout) :: handle              !! PD_NO_HANDLE on entry; > 0 on success (same on every rank)
    character(len=*), intent(in) :: nml_file      !! namelist file with &precipdiff_nml (read on the inference rank)
    real(pd_r8), intent(in) :: lon(:)             !! longitudes of this rank's block (degrees_east)
    real(pd_r8), intent(in) :: lat(:)             !! latitudes of this rank's block (degrees_north)
    integer, intent(in) :: start(2)               !! 1-based global (lon, lat) index of the block's first cell
    integer, intent(in) :: global_shape(2)        !! (nlon, nlat) of the global grid (same on every rank)
    type(MPI_Comm), intent(in) :: comm            !! host communicator (never MPI_COMM_WORLD implicitly)
    character(len=*), intent(out) :: errmsg       !! error message ('' on success), identical on every rank
    integer, intent(out) :: errflg                !! error flag (0 on success), identical on every rank
    integer, intent(in), optional :: inference_rank !! rank (in comm) that runs Python; default 0
    integer, intent(in), optional :: fine_start(2) !! 1-based start of this rank's fine-grid output block
    integer, intent(in), optional :: fine_count(2) !! shape of this rank's fine-grid output block
    character(len=*), intent(in), optional :: inference !! 'root' (default: one inference rank) or 'per_node'
    integer, intent(in), optional :: ranks_per_inference !! per_node: groups of this many consecutive ranks instead of nodes (> 0)
    type(mpi_instance) :: work
    real(pd_r8), allocatable :: glon(:), glat(:)
    character(len=PD_ERRMSG_LEN) :: msg
    integer :: flg, rpi, slot
    logical :: was_live

    msg = ''
    flg = 0
    was_live = is_live(handle)
    if (was_live) then
      ! Refused, but this rank still makes every collective call below.
      msg = ROUTINE_INIT//': handle '//pd_int_str(handle)// &
           ' is already initialised; call precipdiff_mpi_finalize first'
      flg = PD_ERR_INVALID_ARGUMENT
    end if
    call open_layer(work, comm, inference_rank, inference, ranks_per_inference, rpi, msg, flg)
    if (work%comm /= MPI_COMM_NULL .and. work%split) call group_inference_ranks(work, rpi)
    if (work%comm /= MPI_COMM_NULL) then
      work%gshape = global_shape
      if (flg == 0) call check_block(lon, lat, start, global_shape, fine_start, fine_count, &
           msg, flg)
      call agree(work, msg, flg)
    end if
    if (flg == 0) call learn_blocks(work, start, size(lon), size(lat), &
         present(fine_start) .and. present(fine_count), msg, flg)
    if (flg == 0) then
      call global_coords(work, lon, lat, glon, glat, msg, flg)
      call start_plugin(work, nml_file, glon, glat, msg, flg)
    end if
    if (flg == 0) call fine_blocks(work, fine_start, fine_count, msg, flg)
    if (flg /= 0) then
      call abandon(work)
      if (.not. was_live) handle = PD_NO_HANDLE
      errmsg = msg
      errflg = flg
      return
    end if
    if (work%infer) then
      allocate (work%out_model(global_shape(1), global_shape(2)))
      allocate (work%out_fine(work%fshape(1), work%fshape(2)))
    else
      allocate (work%out_model(0, 0), work%out_fine(0, 0))
    end if
    work%live = .true.
    slot = new_slot()
    instances(slot) = work
    handle = slot
    errmsg = ''
    errflg = 0
  end subroutine pdm_init_f08

  !> True when handle names a live instance on this rank.
  logical function is_live(handle)
    integer, intent(in) :: handle !! handle to test
    is_live = .false.
    if (handle == PD_NO_HANDLE .or. .not. allocated(instances)) return
    if (handle < 1 .or. handle > size(instances)) return
    is_live = instances(handle)%live
  end function is_live

  !> Duplicate the host communicator and agree on the inference rank and mode
  !! (collective). Errors are the same on every rank; the duplicate is then freed
  !! (work%comm is MPI_COMM_NULL whenever this returns an error).
  subroutine open_layer(work, comm, inference_rank, inference, ranks_per_inference, rpi, &
       msg, flg)
    type(mpi_instance), intent(inout) :: work         !! the instance being built
    type(MPI_Comm), intent(in) :: comm                !! host communicator
    integer, intent(in), optional :: inference_rank   !! see pdm_init_f08
    character(len=*), intent(in), optional :: inference !! see pdm_init_f08
    integer, intent(in), optional :: ranks_per_inference !! see pdm_init_f08
    integer, intent(out) :: rpi                       !! agreed ranks_per_inference (0: nodes)
    character(len=*), intent(inout) :: msg            !! error message
    integer, intent(inout) :: flg                     !! error flag
    integer :: ierr, mode, flags(2), flags4(4)
    rpi = 0
    work%comm = MPI_COMM_NULL
    call MPI_Comm_dup(comm, work%comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      call mpi_failed('MPI_Comm_dup of the host communicator', ierr, msg, flg)
      work%comm = MPI_COMM_NULL
      return
    end if
    call MPI_Comm_set_errhandler(work%comm, MPI_ERRORS_RETURN, ierr)
    call MPI_Comm_rank(work%comm, work%rank, ierr)
    call MPI_Comm_size(work%comm, work%nranks, ierr)
    work%root = 0
    if (present(inference_rank)) work%root = inference_rank
    ! Every rank must name the same inference rank; out of range is an error everywhere.
    flags = [work%root, -work%root]
    call MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_INTEGER, MPI_MAX, work%comm, ierr)
    if (flags(1) /= -flags(2) .or. work%root < 0 .or. work%root >= work%nranks) then
      msg = ROUTINE_INIT//': inference_rank = '//pd_int_str(work%root)// &
           ' must be the same on every rank and in [0, '//pd_int_str(work%nranks - 1)//']'
      flg = PD_ERR_INVALID_ARGUMENT
      call label(work%rank, msg)
      call MPI_Comm_free(work%comm, ierr)
      work%comm = MPI_COMM_NULL
      return
    end if
    ! Inference mode: 0 = root (one inference rank), 1 = per node (or per group).
    mode = 0
    if (present(inference)) then
      select case (trim(inference))
      case ('root')
        mode = 0
      case ('per_node')
        mode = 1
      case default
        mode = -1
      end select
    end if
    if (present(ranks_per_inference)) rpi = ranks_per_inference
    flags4 = [mode, -mode, rpi, -rpi]
    call MPI_Allreduce(MPI_IN_PLACE, flags4, 4, MPI_INTEGER, MPI_MAX, work%comm, ierr)
    if (flags4(1) /= -flags4(2) .or. flags4(3) /= -flags4(4) .or. mode < 0 .or. rpi < 0 .or. &
         (mode == 1 .and. work%root /= 0) .or. (mode == 0 .and. rpi /= 0)) then
      msg = ROUTINE_INIT//': inference must be ''root'' or ''per_node'' and &
           &ranks_per_inference (per_node only; 0 = one group per node) >= 0, both the &
           &same on every rank, and per_node needs inference_rank = 0 (this rank: &
           &ranks_per_inference = '//pd_int_str(rpi)//')'
      flg = PD_ERR_INVALID_ARGUMENT
      call label(work%rank, msg)
      call MPI_Comm_free(work%comm, ierr)
      work%comm = MPI_COMM_NULL
      return
    end if
    work%split = mode == 1
    work%infer = work%rank == work%root
  end subroutine open_layer

  !> Per-node mode: the lowest rank of each node (or of each group of rpi consecutive
  !! ranks) is an inference rank; they get the communicator the plugin splits the
  !! members across. A single group falls back to the root mode (collective).
  subroutine group_inference_ranks(work, rpi)
    type(mpi_instance), intent(inout) :: work !! the instance being built
    integer, intent(in) :: rpi                !! ranks per group (0: one group per node)
    type(MPI_Comm) :: ncomm
    integer :: ierr, nrank, color, mine
    if (rpi > 0) then
      call MPI_Comm_split(work%comm, work%rank/rpi, work%rank, ncomm, ierr)
    else
      call MPI_Comm_split_type(work%comm, MPI_COMM_TYPE_SHARED, work%rank, MPI_INFO_NULL, &
           ncomm, ierr)
    end if
    call MPI_Comm_rank(ncomm, nrank, ierr)
    call MPI_Comm_free(ncomm, ierr)
    work%infer = nrank == 0
    color = merge(0, MPI_UNDEFINED, work%infer)
    call MPI_Comm_split(work%comm, color, work%rank, work%icomm, ierr)
    if (work%infer) call MPI_Comm_set_name(work%icomm, INFERENCE_COMM_NAME, ierr)
    mine = merge(1, 0, work%infer)
    call MPI_Allreduce(mine, work%ninfer, 1, MPI_INTEGER, MPI_SUM, work%comm, ierr)
    if (work%ninfer == 1) then
      ! A single node: the root mode's protocol, no member split.
      if (work%infer) call MPI_Comm_free(work%icomm, ierr)
      work%split = .false.
    end if
  end subroutine group_inference_ranks

  !> Local checks of this rank's block arguments (no communication).
  subroutine check_block(lon, lat, start, global_shape, fine_start, fine_count, msg, flg)
    real(pd_r8), intent(in) :: lon(:), lat(:)      !! this rank's coordinates
    integer, intent(in) :: start(2), global_shape(2) !! block start, global shape
    integer, intent(in), optional :: fine_start(2), fine_count(2) !! optional fine block
    character(len=*), intent(inout) :: msg         !! error message
    integer, intent(inout) :: flg                  !! error flag
    if (any(global_shape < 1)) then
      msg = ROUTINE_INIT//': global_shape = ('//pd_int_str(global_shape(1))//', '// &
           pd_int_str(global_shape(2))//') must be positive'
      flg = PD_ERR_INVALID_ARGUMENT
    else if (size(lon) < 1 .or. size(lat) < 1) then
      msg = ROUTINE_INIT//': empty block ('//pd_int_str(size(lon))//' longitudes, '// &
           pd_int_str(size(lat))//' latitudes); every rank must own at least one cell'
      flg = PD_ERR_INVALID_ARGUMENT
    else if (any(start < 1) .or. start(1) + size(lon) - 1 > global_shape(1) .or. &
         start(2) + size(lat) - 1 > global_shape(2)) then
      msg = ROUTINE_INIT//': block start = ('//pd_int_str(start(1))//', '// &
           pd_int_str(start(2))//') with '//pd_int_str(size(lon))//' x '// &
           pd_int_str(size(lat))//' cells does not fit in global_shape = ('// &
           pd_int_str(global_shape(1))//', '//pd_int_str(global_shape(2))//')'
      flg = PD_ERR_INVALID_ARGUMENT
    else if (present(fine_start) .neqv. present(fine_count)) then
      msg = ROUTINE_INIT//': pass both fine_start and fine_count, or neither'
      flg = PD_ERR_INVALID_ARGUMENT
    end if
  end subroutine check_block

  !> Every rank learns every block (collective); they must tile the global grid.
  !! The result is the same on every rank (same data), so no agreement is needed.
  subroutine learn_blocks(work, start, nlon, nlat, have_fine, msg, flg)
    type(mpi_instance), intent(inout) :: work !! the instance being built
    integer, intent(in) :: start(2)           !! this rank's block start
    integer, intent(in) :: nlon, nlat         !! this rank's block size
    logical, intent(in) :: have_fine          !! fine_start/fine_count given here
    character(len=*), intent(inout) :: msg    !! error message
    integer, intent(inout) :: flg             !! error flag
    integer :: info(7), r, ierr, holes, overlaps
    integer, allocatable :: all_info(:, :), cover(:, :)
    info = [start(1), start(2), nlon, nlat, work%gshape(1), work%gshape(2), merge(1, 0, have_fine)]
    allocate (all_info(7, work%nranks))
    call MPI_Allgather(info, 7, MPI_INTEGER, all_info, 7, MPI_INTEGER, work%comm, ierr)
    work%starts = all_info(1:2, :)
    work%counts = all_info(3:4, :)
    do r = 1, work%nranks
      if (any(all_info(5:6, r) /= all_info(5:6, 1))) then
        msg = ROUTINE_INIT//': rank '//pd_int_str(r - 1)//' passed global_shape = ('// &
             pd_int_str(all_info(5, r))//', '//pd_int_str(all_info(6, r))// &
             ') but rank 0 passed ('//pd_int_str(all_info(5, 1))//', '// &
             pd_int_str(all_info(6, 1))//')'
        flg = PD_ERR_INVALID_ARGUMENT
        return
      end if
    end do
    if (any(all_info(7, :) /= all_info(7, 1))) then
      msg = ROUTINE_INIT//': fine_start/fine_count given on some ranks only'
      flg = PD_ERR_INVALID_ARGUMENT
      return
    end if
    allocate (cover(work%gshape(1), work%gshape(2)))
    cover = 0
    do r = 1, work%nranks
      associate (s => work%starts(:, r), c => work%counts(:, r))
        cover(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1) = &
             cover(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1) + 1
      end associate
    end do
    if (any(cover /= 1)) then
      holes = count(cover == 0)
      overlaps = count(cover > 1)
      msg = ROUTINE_INIT//': the blocks of the ranks do not tile the global grid: '// &
           pd_int_str(holes)//' cells owned by no rank, '//pd_int_str(overlaps)// &
           ' cells owned by several (check start and the sizes of lon/lat on each rank)'
      flg = PD_ERR_INVALID_ARGUMENT
    end if
  end subroutine learn_blocks

  !> Global coordinates on the inference rank, from the blocks' coordinates
  !! (collective). A conflict between ranks is found on the inference rank only and
  !! agreed in start_plugin.
  subroutine global_coords(work, lon, lat, glon, glat, msg, flg)
    type(mpi_instance), intent(inout) :: work             !! the instance being built
    real(pd_r8), intent(in) :: lon(:), lat(:)             !! this rank's coordinates
    real(pd_r8), allocatable, intent(out) :: glon(:), glat(:) !! global coordinates (root)
    character(len=*), intent(inout) :: msg                !! error message
    integer, intent(inout) :: flg                         !! error flag
    allocate (glon(work%gshape(1)), glat(work%gshape(2)))
    call gather_axis(work, 1, lon, glon, 'longitudes', msg, flg)
    call gather_axis(work, 2, lat, glat, 'latitudes', msg, flg)
  end subroutine global_coords

  !> Gather one axis' coordinates of every block into glob on the inference rank;
  !! ranks sharing a row or column must agree on its coordinate (checked there).
  subroutine gather_axis(work, axis, coords, glob, what, msg, flg)
    type(mpi_instance), intent(in) :: work      !! the instance being built
    integer, intent(in) :: axis                 !! 1: longitudes, 2: latitudes
    real(pd_r8), intent(in) :: coords(:)        !! this rank's coordinates on that axis
    real(pd_r8), intent(inout) :: glob(:)       !! global coordinates (filled on the root)
    character(len=*), intent(in) :: what        !! name of the axis, for messages
    character(len=*), intent(inout) :: msg      !! error message
    integer, intent(inout) :: flg               !! error flag
    real(pd_r8), allocatable :: buf(:)
    integer :: sizes(work%nranks), displs(work%nranks), r, i, ierr
    logical :: seen(size(glob))
    glob = 0
    sizes = work%counts(axis, :)
    displs(1) = 0
    do r = 2, work%nranks
      displs(r) = displs(r - 1) + sizes(r - 1)
    end do
    allocate (buf(merge(sum(sizes), 0, work%rank == work%root)))
    call MPI_Gatherv(coords, size(coords), MPI_DOUBLE_PRECISION, buf, sizes, displs, &
         MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
    if (work%rank /= work%root) return
    seen = .false.
    do r = 1, work%nranks
      associate (s => work%starts(axis, r), c => work%counts(axis, r))
        do i = 1, c
          if (flg == 0 .and. seen(s + i - 1)) then
            if (abs(glob(s + i - 1) - buf(displs(r) + i)) > 0) then
              msg = ROUTINE_INIT//': rank '//pd_int_str(r - 1)//' passed '//what// &
                   ' that differ from another rank''s for the same cells'
              flg = PD_ERR_INVALID_ARGUMENT
            end if
          end if
          seen(s + i - 1) = .true.
        end do
        glob(s:s + c - 1) = buf(displs(r) + 1:displs(r) + c)
      end associate
    end do
  end subroutine gather_axis

  !> Only the inference rank(s) start Python; every rank learns the fine grid
  !! (collective; errors agreed).
  subroutine start_plugin(work, nml_file, glon, glat, msg, flg)
    type(mpi_instance), intent(inout) :: work     !! the instance being built
    character(len=*), intent(in) :: nml_file      !! namelist file
    real(pd_r8), intent(inout) :: glon(:), glat(:) !! global coordinates (valid on the root)
    character(len=*), intent(inout) :: msg        !! error message
    integer, intent(inout) :: flg                 !! error flag
    integer :: ierr, shp(4)
    shp = 0
    if (work%split) then
      ! The coordinate checks of rank 0, then the global coordinates to every inference rank.
      call agree(work, msg, flg)
      if (flg == 0 .and. work%infer) then
        call MPI_Bcast(glon, size(glon), MPI_DOUBLE_PRECISION, 0, work%icomm, ierr)
        call MPI_Bcast(glat, size(glat), MPI_DOUBLE_PRECISION, 0, work%icomm, ierr)
      end if
    end if
    if (work%infer .and. flg == 0) then
      if (work%split) then
        ! The plugin splits the members across the inference communicator.
        call precipdiff_init(work%plugin, nml_file, glon, glat, msg, flg, &
             member_comm=work%icomm%MPI_VAL)
      else
        ! comm: the plugin learns its rank in the host communicator (e.g. for
        ! &precipdiff_nml output_rank, which must name the inference rank).
        call precipdiff_init(work%plugin, nml_file, glon, glat, msg, flg, &
             comm=work%comm%MPI_VAL)
      end if
      if (flg == 0) call precipdiff_shapes(work%plugin, shp(1), shp(2), shp(3), shp(4), &
           msg, flg)
    end if
    call share_inf(work, msg, flg)
    if (flg /= 0) return
    call MPI_Bcast(shp, 4, MPI_INTEGER, work%root, work%comm, ierr)
    work%fshape = shp(3:4)
    allocate (work%lon_fine(shp(3)), work%lat_fine(shp(4)))
    if (work%rank == work%root) then
      call precipdiff_fine_coords(work%plugin, work%lon_fine, work%lat_fine, msg, flg)
    end if
    call share_root(work, msg, flg)
    if (flg /= 0) return
    call MPI_Bcast(work%lon_fine, shp(3), MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
    call MPI_Bcast(work%lat_fine, shp(4), MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
  end subroutine start_plugin

  !> Each rank's block of the fine grid: given (fine_start/fine_count, checked and
  !! agreed), proportional when the fine grid refines the model grid r times, else the
  !! whole fine grid.
  subroutine fine_blocks(work, fine_start, fine_count, msg, flg)
    type(mpi_instance), intent(inout) :: work       !! the instance being built
    integer, intent(in), optional :: fine_start(2), fine_count(2) !! this rank's fine block
    character(len=*), intent(inout) :: msg          !! error message
    integer, intent(inout) :: flg                   !! error flag
    integer :: info(4), ratio, ierr
    integer, allocatable :: all_info(:, :)
    if (present(fine_start) .and. present(fine_count)) then
      info = [fine_start, fine_count]
      if (any(fine_start < 1) .or. any(fine_count < 1) .or. &
           any(fine_start + fine_count - 1 > work%fshape)) then
        msg = ROUTINE_INIT//': fine_start = ('//pd_int_str(fine_start(1))//', '// &
             pd_int_str(fine_start(2))//') fine_count = ('//pd_int_str(fine_count(1))// &
             ', '//pd_int_str(fine_count(2))//') is outside the fine grid ('// &
             pd_int_str(work%fshape(1))//', '//pd_int_str(work%fshape(2))//')'
        flg = PD_ERR_INVALID_ARGUMENT
      end if
      call agree(work, msg, flg)
      allocate (all_info(4, work%nranks))
      call MPI_Allgather(info, 4, MPI_INTEGER, all_info, 4, MPI_INTEGER, work%comm, ierr)
      work%fstarts = all_info(1:2, :)
      work%fcounts = all_info(3:4, :)
      return
    end if
    ratio = work%fshape(1)/work%gshape(1)
    allocate (work%fstarts(2, work%nranks), work%fcounts(2, work%nranks))
    if (ratio >= 1 .and. all(work%fshape == ratio*work%gshape)) then
      work%fstarts = ratio*(work%starts - 1) + 1
      work%fcounts = ratio*work%counts
    else
      work%fstarts = 1
      work%fcounts(1, :) = work%fshape(1)
      work%fcounts(2, :) = work%fshape(2)
    end if
  end subroutine fine_blocks

  !> Release what a failed init built: the plugin (inference ranks) and the
  !! layer's communicators.
  subroutine abandon(work)
    type(mpi_instance), intent(inout) :: work !! the instance being built
    character(len=PD_ERRMSG_LEN) :: msg
    integer :: flg
    if (work%infer .and. work%plugin /= PD_NO_HANDLE) call precipdiff_finalize(work%plugin, msg, flg)
    if (work%comm /= MPI_COMM_NULL) call free_comms(work)
  end subroutine abandon

  !> Create the decomposed plugin with an integer communicator (`use mpi`).
  subroutine pdm_init_int(handle, nml_file, lon, lat, start, global_shape, comm, errmsg, &
       errflg, inference_rank, fine_start, fine_count, inference, ranks_per_inference)
    integer, intent(inout) :: handle              !! PD_NO_HANDLE on entry; > 0 on success
    character(len=*), intent(in) :: nml_file      !! namelist file with &precipdiff_nml
    real(pd_r8), intent(in) :: lon(:)             !! longitudes of this rank's block
    real(pd_r8), intent(in) :: lat(:)             !! latitudes of this rank's block
    integer, intent(in) :: start(2)               !! 1-based global (lon, lat) start of the block
    integer, intent(in) :: global_shape(2)        !! (nlon, nlat) of the global grid
    integer, intent(in) :: comm                   !! host communicator as an integer handle
    character(len=*), intent(out) :: errmsg       !! error message ('' on success)
    integer, intent(out) :: errflg                !! error flag (0 on success)
    integer, intent(in), optional :: inference_rank !! rank that runs Python; default 0
    integer, intent(in), optional :: fine_start(2) !! start of this rank's fine block
    integer, intent(in), optional :: fine_count(2) !! shape of this rank's fine block
    character(len=*), intent(in), optional :: inference !! 'root' (default) or 'per_node'
    integer, intent(in), optional :: ranks_per_inference !! per_node: ranks per group instead of nodes
    type(MPI_Comm) :: c
    c%MPI_VAL = comm
    call pdm_init_f08(handle, nml_file, lon, lat, start, global_shape, c, errmsg, errflg, &
         inference_rank, fine_start, fine_count, inference, ranks_per_inference)
  end subroutine pdm_init_int

  ! =============================================================== set_field

  !> Common path of set_field: check locally, agree, gather, set on the root, share.
  subroutine set_common(handle, name, nlev, n1, n2, r8v, r8p, r4v, r4p, errmsg, errflg, &
       pressure_ok)
    integer, intent(in) :: handle, nlev, n1, n2
    logical, intent(in), optional :: pressure_ok
    character(len=*), intent(in) :: name
    real(pd_r8), intent(in), optional :: r8v(:), r8p(:)
    real(pd_r4), intent(in), optional :: r4v(:), r4p(:)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    type(mpi_instance), pointer :: inst
    real(pd_r8), allocatable :: g8(:, :, :), p8(:, :, :)
    real(pd_r4), allocatable :: g4(:, :, :), p4(:, :, :)
    integer :: ierr, lev(2), me, g(3)
    real(pd_r8) :: t0
    call lookup(handle, 'precipdiff_mpi_set_field', inst, errmsg, errflg)
    if (errflg /= 0) return
    me = inst%rank + 1
    if (n1 /= inst%counts(1, me) .or. n2 /= inst%counts(2, me)) then
      errmsg = 'precipdiff_mpi_set_field: field "'//trim(name)//'" has shape ('// &
           pd_int_str(n1)//', '//pd_int_str(n2)//') but this rank''s block is ('// &
           pd_int_str(inst%counts(1, me))//', '//pd_int_str(inst%counts(2, me))//')'
      errflg = PD_ERR_INVALID_ARGUMENT
    end if
    if (present(pressure_ok)) then
      if (.not. pressure_ok .and. errflg == 0) then
        errmsg = 'precipdiff_mpi_set_field: pressure of field "'//trim(name)// &
             '" must have the same shape as the field'
        errflg = PD_ERR_INVALID_ARGUMENT
      end if
    end if
    ! Same number of levels everywhere (else the gathers would not match).
    lev = [nlev, -nlev]
    call MPI_Allreduce(MPI_IN_PLACE, lev, 2, MPI_INTEGER, MPI_MAX, inst%comm, ierr)
    if (errflg == 0 .and. lev(1) /= -lev(2)) then
      errmsg = 'precipdiff_mpi_set_field: field "'//trim(name)//'" has '//pd_int_str(nlev)// &
           ' levels here but between '//pd_int_str(-lev(2))//' and '//pd_int_str(lev(1))// &
           ' across the ranks'
      errflg = PD_ERR_INVALID_ARGUMENT
    end if
    call agree(inst, errmsg, errflg)
    if (errflg /= 0) return
    g = [inst%gshape(1), inst%gshape(2), max(nlev, 1)]
    if (.not. inst%infer) g = 0
    if (present(r8v)) then
      allocate (g8(g(1), g(2), g(3)))
      call gather_r8(inst, r8v, size(r8v), max(nlev, 1), g8, ierr)
      call bcast_inf_r8(inst, g8, ierr)
      if (present(r8p) .and. ierr == MPI_SUCCESS) then
        allocate (p8(g(1), g(2), g(3)))
        call gather_r8(inst, r8p, size(r8p), max(nlev, 1), p8, ierr)
        call bcast_inf_r8(inst, p8, ierr)
      end if
    else
      allocate (g4(g(1), g(2), g(3)))
      call gather_r4(inst, r4v, size(r4v), max(nlev, 1), g4, ierr)
      call bcast_inf_r4(inst, g4, ierr)
      if (present(r4p) .and. ierr == MPI_SUCCESS) then
        allocate (p4(g(1), g(2), g(3)))
        call gather_r4(inst, r4p, size(r4p), max(nlev, 1), p4, ierr)
        call bcast_inf_r4(inst, p4, ierr)
      end if
    end if
    if (ierr /= MPI_SUCCESS) call mpi_failed('MPI_Gatherv', ierr, errmsg, errflg)
    call agree(inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%infer) then
      t0 = MPI_Wtime()
      if (present(r8v)) then
        if (nlev == 0) then
          call precipdiff_set_field(inst%plugin, name, g8(:, :, 1), errmsg, errflg)
        else
          call precipdiff_set_field(inst%plugin, name, g8, p8, errmsg, errflg)
        end if
      else
        if (nlev == 0) then
          call precipdiff_set_field(inst%plugin, name, g4(:, :, 1), errmsg, errflg)
        else
          call precipdiff_set_field(inst%plugin, name, g4, p4, errmsg, errflg)
        end if
      end if
      inst%t_python = inst%t_python + (MPI_Wtime() - t0)
    end if
    t0 = MPI_Wtime()
    call share_inf(inst, errmsg, errflg)
    inst%t_sync = inst%t_sync + (MPI_Wtime() - t0)
  end subroutine set_common

  !> Feed this rank's block of a 2-D real(8) field (nlon_local, nlat_local). Collective.
  subroutine mset_2d_r8(handle, name, values, errmsg, errflg)
    integer, intent(in) :: handle                  !! precipdiff_mpi handle
    character(len=*), intent(in) :: name           !! variable name (same on every rank)
    real(pd_r8), intent(in), contiguous :: values(:, :) !! this rank's block
    character(len=*), intent(out) :: errmsg        !! error message ('' on success)
    integer, intent(out) :: errflg                 !! error flag (0 on success)
    call set_common(handle, name, 0, size(values, 1), size(values, 2), r8v=reshape(values, &
         [size(values)]), errmsg=errmsg, errflg=errflg)
  end subroutine mset_2d_r8

  !> Feed this rank's block of a 2-D real(4) field (nlon_local, nlat_local). Collective.
  subroutine mset_2d_r4(handle, name, values, errmsg, errflg)
    integer, intent(in) :: handle                  !! precipdiff_mpi handle
    character(len=*), intent(in) :: name           !! variable name (same on every rank)
    real(pd_r4), intent(in), contiguous :: values(:, :) !! this rank's block
    character(len=*), intent(out) :: errmsg        !! error message ('' on success)
    integer, intent(out) :: errflg                 !! error flag (0 on success)
    call set_common(handle, name, 0, size(values, 1), size(values, 2), r4v=reshape(values, &
         [size(values)]), errmsg=errmsg, errflg=errflg)
  end subroutine mset_2d_r4

  !> Feed this rank's block of a 3-D real(8) field with its pressure (Pa). Collective.
  subroutine mset_3d_r8(handle, name, values, pressure, errmsg, errflg)
    integer, intent(in) :: handle                  !! precipdiff_mpi handle
    character(len=*), intent(in) :: name           !! variable name (same on every rank)
    real(pd_r8), intent(in), contiguous :: values(:, :, :)   !! (nlon_local, nlat_local, nlev)
    real(pd_r8), intent(in), contiguous :: pressure(:, :, :) !! same shape, Pa
    character(len=*), intent(out) :: errmsg        !! error message ('' on success)
    integer, intent(out) :: errflg                 !! error flag (0 on success)
    call set_common(handle, name, size(values, 3), size(values, 1), size(values, 2), &
         r8v=reshape(values, [size(values)]), r8p=reshape(pressure, [size(pressure)]), &
         errmsg=errmsg, errflg=errflg, pressure_ok=all(shape(pressure) == shape(values)))
  end subroutine mset_3d_r8

  !> Feed this rank's block of a 3-D real(4) field with its pressure (Pa). Collective.
  subroutine mset_3d_r4(handle, name, values, pressure, errmsg, errflg)
    integer, intent(in) :: handle                  !! precipdiff_mpi handle
    character(len=*), intent(in) :: name           !! variable name (same on every rank)
    real(pd_r4), intent(in), contiguous :: values(:, :, :)   !! (nlon_local, nlat_local, nlev)
    real(pd_r4), intent(in), contiguous :: pressure(:, :, :) !! same shape, Pa
    character(len=*), intent(out) :: errmsg        !! error message ('' on success)
    integer, intent(out) :: errflg                 !! error flag (0 on success)
    call set_common(handle, name, size(values, 3), size(values, 1), size(values, 2), &
         r4v=reshape(values, [size(values)]), r4p=reshape(pressure, [size(pressure)]), &
         errmsg=errmsg, errflg=errflg, pressure_ok=all(shape(pressure) == shape(values)))
  end subroutine mset_3d_r4

  ! ========================================================= step and output

  !> Advance the plugin clock (fields already fed). Collective; ready is the
  !! same on every rank. model_time and dt of the inference rank are used.
  subroutine precipdiff_mpi_step(handle, model_time, dt, ready, errmsg, errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    real(pd_r8), intent(in) :: model_time   !! model time at the end of this step, s
    real(pd_r8), intent(in) :: dt           !! timestep length, s
    logical, intent(out) :: ready           !! true when a window closed (same on every rank)
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    real(pd_r8) :: t0
    ready = .false.
    call lookup(handle, 'precipdiff_mpi_step', inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%infer) then
      t0 = MPI_Wtime()
      call precipdiff_step(inst%plugin, model_time, dt, ready, errmsg, errflg)
      inst%t_python = inst%t_python + (MPI_Wtime() - t0)
    end if
    t0 = MPI_Wtime()
    call share_inf(inst, errmsg, errflg, ready)
    inst%t_sync = inst%t_sync + (MPI_Wtime() - t0)
    if (errflg /= 0) ready = .false.
    inst%ncalls = inst%ncalls + 1
  end subroutine precipdiff_mpi_step

  !> Scatter the latest output: pr_fine is this rank's fine block, pr_model its
  !! model block (see precipdiff_mpi_shapes). Collective.
  subroutine precipdiff_mpi_get_output(handle, pr_fine, pr_model, errmsg, errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    real(pd_r8), intent(inout), contiguous :: pr_fine(:, :)  !! (nlon_fine_local, nlat_fine_local)
    real(pd_r8), intent(inout), contiguous :: pr_model(:, :) !! (nlon_local, nlat_local)
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    integer :: me, ierr
    real(pd_r8) :: t0
    call lookup(handle, 'precipdiff_mpi_get_output', inst, errmsg, errflg)
    if (errflg /= 0) return
    me = inst%rank + 1
    if (any(shape(pr_model) /= inst%counts(:, me))) then
      errmsg = 'precipdiff_mpi_get_output: pr_model has shape ('// &
           pd_int_str(size(pr_model, 1))//', '//pd_int_str(size(pr_model, 2))// &
           ') but this rank''s block is ('//pd_int_str(inst%counts(1, me))//', '// &
           pd_int_str(inst%counts(2, me))//')'
      errflg = PD_ERR_INVALID_ARGUMENT
    else if (any(shape(pr_fine) /= inst%fcounts(:, me))) then
      errmsg = 'precipdiff_mpi_get_output: pr_fine has shape ('// &
           pd_int_str(size(pr_fine, 1))//', '//pd_int_str(size(pr_fine, 2))// &
           ') but this rank''s fine block is ('//pd_int_str(inst%fcounts(1, me))//', '// &
           pd_int_str(inst%fcounts(2, me))//')'
      errflg = PD_ERR_INVALID_ARGUMENT
    end if
    call agree(inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%infer) then
      t0 = MPI_Wtime()
      call precipdiff_get_output(inst%plugin, inst%out_fine, inst%out_model, errmsg, errflg)
      inst%t_python = inst%t_python + (MPI_Wtime() - t0)
    end if
    call share_inf(inst, errmsg, errflg)
    if (errflg /= 0) return
    call scatter_r8(inst, inst%starts, inst%counts, inst%out_model, pr_model, ierr)
    if (ierr == MPI_SUCCESS) then
      call scatter_r8(inst, inst%fstarts, inst%fcounts, inst%out_fine, pr_fine, ierr)
    end if
    if (ierr /= MPI_SUCCESS) call mpi_failed('MPI_Scatterv', ierr, errmsg, errflg)
    call agree(inst, errmsg, errflg)
  end subroutine precipdiff_mpi_get_output

  !> One timestep (fields already fed): advance the clock; when a window
  !! closes, scatter pr_fine and pr_model and set ready. Collective.
  subroutine precipdiff_mpi_run(handle, model_time, dt, pr_fine, pr_model, ready, errmsg, &
       errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    real(pd_r8), intent(in) :: model_time   !! model time at the end of this step, s
    real(pd_r8), intent(in) :: dt           !! timestep length, s
    real(pd_r8), intent(inout), contiguous :: pr_fine(:, :)  !! this rank's fine block
    real(pd_r8), intent(inout), contiguous :: pr_model(:, :) !! this rank's model block
    logical, intent(out) :: ready           !! true when this call filled the outputs
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    call precipdiff_mpi_step(handle, model_time, dt, ready, errmsg, errflg)
    if (errflg /= 0 .or. .not. ready) return
    call precipdiff_mpi_get_output(handle, pr_fine, pr_model, errmsg, errflg)
    if (errflg /= 0) ready = .false.
  end subroutine precipdiff_mpi_run

  ! ================================================================ queries

  !> Local block shapes (to allocate outputs) and, optionally, global shapes. Local call.
  subroutine precipdiff_mpi_shapes(handle, nlon, nlat, nlon_fine, nlat_fine, errmsg, errflg, &
       global_model, global_fine, fine_start)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    integer, intent(out) :: nlon, nlat      !! this rank's model block
    integer, intent(out) :: nlon_fine, nlat_fine !! this rank's fine block
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    integer, intent(out), optional :: global_model(2) !! (nlon, nlat) of the global model grid
    integer, intent(out), optional :: global_fine(2)  !! (nlon, nlat) of the global fine grid
    integer, intent(out), optional :: fine_start(2)   !! 1-based start of this rank's fine block
    type(mpi_instance), pointer :: inst
    nlon = 0
    nlat = 0
    nlon_fine = 0
    nlat_fine = 0
    call lookup(handle, 'precipdiff_mpi_shapes', inst, errmsg, errflg)
    if (errflg /= 0) return
    nlon = inst%counts(1, inst%rank + 1)
    nlat = inst%counts(2, inst%rank + 1)
    nlon_fine = inst%fcounts(1, inst%rank + 1)
    nlat_fine = inst%fcounts(2, inst%rank + 1)
    if (present(global_model)) global_model = inst%gshape
    if (present(global_fine)) global_fine = inst%fshape
    if (present(fine_start)) fine_start = inst%fstarts(:, inst%rank + 1)
  end subroutine precipdiff_mpi_shapes

  !> Coordinates of this rank's fine block. Local call.
  subroutine precipdiff_mpi_fine_coords(handle, lon_fine, lat_fine, errmsg, errflg)
    integer, intent(in) :: handle             !! precipdiff_mpi handle
    real(pd_r8), intent(out) :: lon_fine(:)   !! (nlon_fine_local), degrees_east
    real(pd_r8), intent(out) :: lat_fine(:)   !! (nlat_fine_local), degrees_north
    character(len=*), intent(out) :: errmsg   !! error message ('' on success)
    integer, intent(out) :: errflg            !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    integer :: s(2), c(2)
    lon_fine = 0
    lat_fine = 0
    call lookup(handle, 'precipdiff_mpi_fine_coords', inst, errmsg, errflg)
    if (errflg /= 0) return
    s = inst%fstarts(:, inst%rank + 1)
    c = inst%fcounts(:, inst%rank + 1)
    if (size(lon_fine) /= c(1) .or. size(lat_fine) /= c(2)) then
      errmsg = 'precipdiff_mpi_fine_coords: got '//pd_int_str(size(lon_fine))// &
           ' longitudes and '//pd_int_str(size(lat_fine))//' latitudes for a fine block of '// &
           pd_int_str(c(1))//' x '//pd_int_str(c(2))//' cells'
      errflg = PD_ERR_INVALID_ARGUMENT
      return
    end if
    lon_fine = inst%lon_fine(s(1):s(1) + c(1) - 1)
    lat_fine = inst%lat_fine(s(2):s(2) + c(2) - 1)
  end subroutine precipdiff_mpi_fine_coords

  !> Names of the fields the bundle needs. Collective (the inference rank knows them).
  subroutine precipdiff_mpi_required_fields(handle, names, nnames, errmsg, errflg)
    integer, intent(in) :: handle               !! precipdiff_mpi handle
    character(len=*), intent(inout) :: names(:) !! receives the first min(size(names), nnames) names
    integer, intent(out) :: nnames              !! number of fields the bundle needs
    character(len=*), intent(out) :: errmsg     !! error message ('' on success)
    integer, intent(out) :: errflg              !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    integer :: ierr, n(2)
    nnames = 0
    call lookup(handle, 'precipdiff_mpi_required_fields', inst, errmsg, errflg)
    if (errflg /= 0) return
    ! Every rank must pass the same size(names) and len(names) for the broadcast.
    n = [size(names)*len(names), -size(names)*len(names)]
    call MPI_Allreduce(MPI_IN_PLACE, n, 2, MPI_INTEGER, MPI_MAX, inst%comm, ierr)
    if (n(1) /= -n(2)) then
      errmsg = 'precipdiff_mpi_required_fields: names must have the same size and length &
           &on every rank'
      errflg = PD_ERR_INVALID_ARGUMENT
    end if
    call agree(inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%rank == inst%root) then
      call precipdiff_required_fields(inst%plugin, names, nnames, errmsg, errflg)
    end if
    call share_root(inst, errmsg, errflg)
    if (errflg /= 0) return
    call MPI_Bcast(nnames, 1, MPI_INTEGER, inst%root, inst%comm, ierr)
    call MPI_Bcast(names, size(names)*len(names), MPI_CHARACTER, inst%root, inst%comm, ierr)
  end subroutine precipdiff_mpi_required_fields

  !> Rank (in the host communicator) that runs the plugin. Local call.
  subroutine precipdiff_mpi_inference_rank(handle, rank, errmsg, errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    integer, intent(out) :: rank            !! inference rank
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    rank = -1
    call lookup(handle, 'precipdiff_mpi_inference_rank', inst, errmsg, errflg)
    if (errflg /= 0) return
    rank = inst%root
  end subroutine precipdiff_mpi_inference_rank

  !> Seconds this rank spent so far: gather (MPI_Gatherv + unpack), Python (inference
  !! rank only: set_field/step/get_output), scatter (pack + MPI_Scatterv), and waiting
  !! for the inference rank's status (the other ranks' view of the Python time). Local call.
  subroutine precipdiff_mpi_timers(handle, t_gather, t_python, t_scatter, t_wait, nsteps, &
       errmsg, errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    real(pd_r8), intent(out) :: t_gather    !! s in gathers
    real(pd_r8), intent(out) :: t_python    !! s in Python (inference rank; 0 elsewhere)
    real(pd_r8), intent(out) :: t_scatter   !! s in scatters
    real(pd_r8), intent(out) :: t_wait      !! s waiting for the inference rank's status
    integer, intent(out) :: nsteps          !! number of precipdiff_mpi_step calls
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    t_gather = 0
    t_python = 0
    t_scatter = 0
    t_wait = 0
    nsteps = 0
    call lookup(handle, 'precipdiff_mpi_timers', inst, errmsg, errflg)
    if (errflg /= 0) return
    t_gather = inst%t_gather
    t_python = inst%t_python
    t_scatter = inst%t_scatter
    t_wait = inst%t_sync
    nsteps = int(inst%ncalls)
  end subroutine precipdiff_mpi_timers

  ! =============================================================== restarts

  !> Write the plugin state to a netCDF restart file (written by the inference
  !! rank; the other ranks hold no plugin state). Collective.
  subroutine precipdiff_mpi_write_restart(handle, path, errmsg, errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    character(len=*), intent(in) :: path    !! restart file path (on the inference rank's file system)
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    call lookup(handle, 'precipdiff_mpi_write_restart', inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%infer) call precipdiff_write_restart(inst%plugin, path, errmsg, errflg)
    call share_inf(inst, errmsg, errflg)
  end subroutine precipdiff_mpi_write_restart

  !> Restore the plugin state from a restart file. Collective.
  subroutine precipdiff_mpi_read_restart(handle, path, errmsg, errflg)
    integer, intent(in) :: handle           !! precipdiff_mpi handle
    character(len=*), intent(in) :: path    !! restart file path
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    call lookup(handle, 'precipdiff_mpi_read_restart', inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%infer) call precipdiff_read_restart(inst%plugin, path, errmsg, errflg)
    call share_inf(inst, errmsg, errflg)
  end subroutine precipdiff_mpi_read_restart

  ! ================================================================ finalize

  !> Release the plugin and the layer's communicator. Collective; idempotent
  !! (PD_NO_HANDLE does nothing). On return handle is PD_NO_HANDLE.
  subroutine precipdiff_mpi_finalize(handle, errmsg, errflg)
    integer, intent(inout) :: handle        !! precipdiff_mpi handle; PD_NO_HANDLE on return
    character(len=*), intent(out) :: errmsg !! error message ('' on success)
    integer, intent(out) :: errflg          !! error flag (0 on success)
    type(mpi_instance), pointer :: inst
    errmsg = ''
    errflg = 0
    if (handle == PD_NO_HANDLE) return
    call lookup(handle, 'precipdiff_mpi_finalize', inst, errmsg, errflg)
    if (errflg /= 0) return
    if (inst%infer) call precipdiff_finalize(inst%plugin, errmsg, errflg)
    call share_inf(inst, errmsg, errflg)
    call free_comms(inst)
    inst%live = .false.
    inst%plugin = PD_NO_HANDLE
    deallocate (inst%starts, inst%counts, inst%fstarts, inst%fcounts, inst%lon_fine, &
         inst%lat_fine, inst%out_model, inst%out_fine)
    handle = PD_NO_HANDLE
  end subroutine precipdiff_mpi_finalize

end module precipdiff_mpi

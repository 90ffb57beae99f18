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
!! ranks' communicator (named 'precipdiff_inference'); every inference rank
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
       pd_r4, pd_r8, PD_NO_HANDLE, PD_ERRMSG_LEN, PD_ERR_INVALID_ARGUMENT, &
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
    write (errmsg, '(a,a,i0,a)') routine, ': handle ', handle, &
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
    type(MPI_Comm) :: ncomm
    integer :: mode, rpi, nrank, color, flags4(4)
    integer :: ierr, slot, r, flags(2), info(8), i, j, ratio
    integer, allocatable :: all_info(:, :), cover(:, :)
    real(pd_r8), allocatable :: glon(:), glat(:), buf(:)
    integer, allocatable :: sizes(:), displs(:)
    logical :: have_fine
    logical, allocatable :: seen(:, :)
    integer :: nlf, nltf, nl, nt, fl(4)
    character(len=PD_ERRMSG_LEN) :: msg2
    integer :: flg2

    errmsg = ''
    errflg = 0
    if (handle /= PD_NO_HANDLE) then
      if (allocated(instances)) then
        if (handle >= 1 .and. handle <= size(instances)) then
          if (instances(handle)%live) then
            write (errmsg, '(a,a,i0,a)') ROUTINE_INIT, ': handle ', handle, &
                 ' is already initialised; call precipdiff_mpi_finalize first'
            errflg = PD_ERR_INVALID_ARGUMENT
          end if
        end if
      end if
    end if

    ! The layer's own communicator: the first collective, made by every rank.
    call MPI_Comm_dup(comm, work%comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      call mpi_failed('MPI_Comm_dup of the host communicator', ierr, errmsg, errflg)
      handle = PD_NO_HANDLE
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
      write (errmsg, '(a,a,i0,a,i0,a)') ROUTINE_INIT, ': inference_rank = ', work%root, &
           ' must be the same on every rank and in [0, ', work%nranks - 1, ']'
      errflg = PD_ERR_INVALID_ARGUMENT
      call label(work%rank, errmsg)
      call MPI_Comm_free(work%comm, ierr)
      handle = PD_NO_HANDLE
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
    rpi = 0
    if (present(ranks_per_inference)) rpi = ranks_per_inference
    flags4 = [mode, -mode, rpi, -rpi]
    call MPI_Allreduce(MPI_IN_PLACE, flags4, 4, MPI_INTEGER, MPI_MAX, work%comm, ierr)
    if (flags4(1) /= -flags4(2) .or. flags4(3) /= -flags4(4) .or. mode < 0 .or. rpi < 0 .or. &
         (mode == 1 .and. work%root /= 0) .or. (mode == 0 .and. rpi /= 0)) then
      write (errmsg, '(a,a,i0,a)') ROUTINE_INIT, ': inference must be ''root'' or ''per_node'' &
           &and ranks_per_inference (per_node only; 0 = one group per node) >= 0, both the &
           &same on every rank, and per_node needs inference_rank = 0 (this rank: &
           &ranks_per_inference = ', rpi, ')'
      errflg = PD_ERR_INVALID_ARGUMENT
      call label(work%rank, errmsg)
      call MPI_Comm_free(work%comm, ierr)
      handle = PD_NO_HANDLE
      return
    end if
    work%split = mode == 1
    work%infer = work%rank == work%root
    if (work%split) then
      ! Node-local groups of the duplicate; the lowest rank of each is an inference rank.
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
      if (work%infer) call MPI_Comm_set_name(work%icomm, 'precipdiff_inference', ierr)
      i = merge(1, 0, work%infer)
      call MPI_Allreduce(i, work%ninfer, 1, MPI_INTEGER, MPI_SUM, work%comm, ierr)
      if (work%ninfer == 1) then
        ! A single node: the root mode's protocol, no member split.
        if (work%infer) call MPI_Comm_free(work%icomm, ierr)
        work%split = .false.
      end if
    end if
    work%gshape = global_shape

    ! Local checks of this rank's block.
    if (errflg == 0) then
      if (any(global_shape < 1)) then
        write (errmsg, '(a,a,2(i0,1x),a)') ROUTINE_INIT, ': global_shape = ', global_shape, &
             'must be positive'
        errflg = PD_ERR_INVALID_ARGUMENT
      else if (size(lon) < 1 .or. size(lat) < 1) then
        write (errmsg, '(a,a,i0,a,i0,a)') ROUTINE_INIT, ': empty block (', size(lon), &
             ' longitudes, ', size(lat), ' latitudes); every rank must own at least one cell'
        errflg = PD_ERR_INVALID_ARGUMENT
      else if (any(start < 1) .or. start(1) + size(lon) - 1 > global_shape(1) .or. &
           start(2) + size(lat) - 1 > global_shape(2)) then
        write (errmsg, '(a,a,i0,a,i0,a,i0,a,i0,a,i0,a,i0,a)') ROUTINE_INIT, &
             ': block start = (', start(1), ', ', start(2), ') with ', size(lon), ' x ', &
             size(lat), ' cells does not fit in global_shape = (', global_shape(1), ', ', &
             global_shape(2), ')'
        errflg = PD_ERR_INVALID_ARGUMENT
      end if
    end if
    have_fine = present(fine_start) .and. present(fine_count)
    if (errflg == 0 .and. (present(fine_start) .neqv. present(fine_count))) then
      errmsg = ROUTINE_INIT//': pass both fine_start and fine_count, or neither'
      errflg = PD_ERR_INVALID_ARGUMENT
    end if
    call agree(work, errmsg, errflg)
    if (errflg /= 0) then
      call free_comms(work)
      handle = PD_NO_HANDLE
      return
    end if

    ! Everyone learns every block (8 integers per rank).
    info = [start(1), start(2), size(lon), size(lat), global_shape(1), global_shape(2), 0, 0]
    if (have_fine) info(7:8) = [1, 0]
    allocate (all_info(8, work%nranks))
    call MPI_Allgather(info, 8, MPI_INTEGER, all_info, 8, MPI_INTEGER, work%comm, ierr)
    work%starts = all_info(1:2, :)
    work%counts = all_info(3:4, :)
    ! Consistency of the decomposition (identical result on every rank: same data).
    do r = 1, work%nranks
      if (any(all_info(5:6, r) /= global_shape)) then
        write (errmsg, '(a,a,i0,a,2(i0,1x),a,2(i0,1x))') ROUTINE_INIT, ': rank ', r - 1, &
             ' passed global_shape = ', all_info(5:6, r), 'but rank 0 passed ', all_info(5:6, 1)
        errflg = PD_ERR_INVALID_ARGUMENT
        exit
      end if
    end do
    if (errflg == 0 .and. any(all_info(7, :) /= all_info(7, 1))) then
      errmsg = ROUTINE_INIT//': fine_start/fine_count given on some ranks only'
      errflg = PD_ERR_INVALID_ARGUMENT
    end if
    if (errflg == 0) then
      allocate (cover(global_shape(1), global_shape(2)))
      cover = 0
      do r = 1, work%nranks
        associate (s => work%starts(:, r), c => work%counts(:, r))
          cover(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1) = &
               cover(s(1):s(1) + c(1) - 1, s(2):s(2) + c(2) - 1) + 1
        end associate
      end do
      if (any(cover /= 1)) then
        j = count(cover == 0)
        i = count(cover > 1)
        write (errmsg, '(a,a,i0,a,i0,a)') ROUTINE_INIT, ': the blocks of the ranks do not tile &
             &the global grid: ', j, ' cells owned by no rank, ', i, &
             ' cells owned by several (check start and the sizes of lon/lat on each rank)'
        errflg = PD_ERR_INVALID_ARGUMENT
      end if
      deallocate (cover)
    end if
    if (errflg /= 0) then
      call free_comms(work)
      handle = PD_NO_HANDLE
      return
    end if

    ! Global coordinates on the inference rank, from the blocks' coordinates.
    allocate (sizes(work%nranks), displs(work%nranks))
    allocate (glon(global_shape(1)), glat(global_shape(2)))
    allocate (seen(maxval(global_shape), 2))
    glon = 0
    glat = 0
    sizes = work%counts(1, :)
    displs(1) = 0
    do r = 2, work%nranks
      displs(r) = displs(r - 1) + sizes(r - 1)
    end do
    allocate (buf(merge(sum(sizes), 0, work%rank == work%root)))
    call MPI_Gatherv(lon, size(lon), MPI_DOUBLE_PRECISION, buf, sizes, displs, &
         MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
    if (work%rank == work%root) then
      seen = .false.
      do r = 1, work%nranks
        associate (s => work%starts(1, r), c => work%counts(1, r))
          ! Ranks sharing a column must agree on its coordinate.
          do i = 1, c
            if (errflg == 0 .and. seen(s + i - 1, 1)) then
              if (abs(glon(s + i - 1) - buf(displs(r) + i)) > 0) then
                write (errmsg, '(a,a,i0,a)') ROUTINE_INIT, ': rank ', r - 1, &
                     ' passed longitudes that differ from another rank''s for the same cells'
                errflg = PD_ERR_INVALID_ARGUMENT
              end if
            end if
            seen(s + i - 1, 1) = .true.
          end do
          glon(s:s + c - 1) = buf(displs(r) + 1:displs(r) + c)
        end associate
      end do
    end if
    deallocate (buf)
    sizes = work%counts(2, :)
    do r = 2, work%nranks
      displs(r) = displs(r - 1) + sizes(r - 1)
    end do
    allocate (buf(merge(sum(sizes), 0, work%rank == work%root)))
    call MPI_Gatherv(lat, size(lat), MPI_DOUBLE_PRECISION, buf, sizes, displs, &
         MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
    if (work%rank == work%root) then
      seen = .false.
      do r = 1, work%nranks
        associate (s => work%starts(2, r), c => work%counts(2, r))
          ! Ranks sharing a row must agree on its coordinate.
          do i = 1, c
            if (errflg == 0 .and. seen(s + i - 1, 2)) then
              if (abs(glat(s + i - 1) - buf(displs(r) + i)) > 0) then
                write (errmsg, '(a,a,i0,a)') ROUTINE_INIT, ': rank ', r - 1, &
                     ' passed latitudes that differ from another rank''s for the same cells'
                errflg = PD_ERR_INVALID_ARGUMENT
              end if
            end if
            seen(s + i - 1, 2) = .true.
          end do
          glat(s:s + c - 1) = buf(displs(r) + 1:displs(r) + c)
        end associate
      end do
    end if
    deallocate (buf)

    ! Only the inference rank(s) start Python.
    fl = 0
    if (work%split) then
      ! The coordinate checks of rank 0, then the global coordinates to every inference rank.
      call agree(work, errmsg, errflg)
      if (errflg == 0 .and. work%infer) then
        call MPI_Bcast(glon, size(glon), MPI_DOUBLE_PRECISION, 0, work%icomm, ierr)
        call MPI_Bcast(glat, size(glat), MPI_DOUBLE_PRECISION, 0, work%icomm, ierr)
      end if
    end if
    if (work%infer .and. errflg == 0) then
      if (work%split) then
        ! The named inference communicator: the plugin splits the members across it.
        call precipdiff_init(work%plugin, nml_file, glon, glat, errmsg, errflg, &
             comm=work%icomm%MPI_VAL)
      else
        ! comm: the plugin learns its rank in the host communicator (e.g. for
        ! &precipdiff_nml output_rank, which must name the inference rank).
        call precipdiff_init(work%plugin, nml_file, glon, glat, errmsg, errflg, &
             comm=work%comm%MPI_VAL)
      end if
      if (errflg == 0) then
        call precipdiff_shapes(work%plugin, nl, nt, nlf, nltf, errmsg, errflg)
        fl = [nl, nt, nlf, nltf]
      end if
    end if
    call share_inf(work, errmsg, errflg)
    if (errflg == 0) then
      call MPI_Bcast(fl, 4, MPI_INTEGER, work%root, work%comm, ierr)
      work%fshape = fl(3:4)
      allocate (work%lon_fine(fl(3)), work%lat_fine(fl(4)))
      if (work%rank == work%root) then
        call precipdiff_fine_coords(work%plugin, work%lon_fine, work%lat_fine, errmsg, errflg)
      end if
      call share_root(work, errmsg, errflg)
    end if
    if (errflg == 0) then
      call MPI_Bcast(work%lon_fine, fl(3), MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
      call MPI_Bcast(work%lat_fine, fl(4), MPI_DOUBLE_PRECISION, work%root, work%comm, ierr)
      ! Fine-grid blocks: given, proportional, or the whole fine grid.
      if (have_fine) then
        info(1:2) = fine_start
        info(3:4) = fine_count
        if (any(fine_start < 1) .or. any(fine_count < 1) .or. &
             any(fine_start + fine_count - 1 > work%fshape)) then
          write (errmsg, '(a,a,i0,a,i0,a,i0,a,i0,a,i0,a,i0,a)') ROUTINE_INIT, &
               ': fine_start = (', fine_start(1), ', ', fine_start(2), ') fine_count = (', &
               fine_count(1), ', ', fine_count(2), ') is outside the fine grid (', &
               work%fshape(1), ', ', work%fshape(2), ')'
          errflg = PD_ERR_INVALID_ARGUMENT
        end if
        call agree(work, errmsg, errflg)
        all_info = 0
        call MPI_Allgather(info, 8, MPI_INTEGER, all_info, 8, MPI_INTEGER, work%comm, ierr)
        work%fstarts = all_info(1:2, :)
        work%fcounts = all_info(3:4, :)
      else
        ratio = work%fshape(1)/global_shape(1)
        allocate (work%fstarts(2, work%nranks), work%fcounts(2, work%nranks))
        if (ratio >= 1 .and. all(work%fshape == ratio*global_shape)) then
          work%fstarts = ratio*(work%starts - 1) + 1
          work%fcounts = ratio*work%counts
        else
          work%fstarts = 1
          work%fcounts(1, :) = work%fshape(1)
          work%fcounts(2, :) = work%fshape(2)
        end if
      end if
    end if
    if (errflg /= 0) then
      if (work%infer .and. work%plugin /= PD_NO_HANDLE) then
        call precipdiff_finalize(work%plugin, msg2, flg2)
      end if
      call free_comms(work)
      handle = PD_NO_HANDLE
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
  end subroutine pdm_init_f08

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
      write (errmsg, '(a,a,a,i0,a,i0,a,i0,a,i0,a)') 'precipdiff_mpi_set_field: field "', &
           trim(name), '" has shape (', n1, ', ', n2, ') but this rank''s block is (', &
           inst%counts(1, me), ', ', inst%counts(2, me), ')'
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
      write (errmsg, '(a,a,a,i0,a,i0,a)') 'precipdiff_mpi_set_field: field "', trim(name), &
           '" has ', nlev, ' levels here but between ', -lev(2), ' and ', lev(1), &
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
      write (errmsg, '(a,i0,a,i0,a,i0,a,i0,a)') 'precipdiff_mpi_get_output: pr_model has shape (', &
           size(pr_model, 1), ', ', size(pr_model, 2), ') but this rank''s block is (', &
           inst%counts(1, me), ', ', inst%counts(2, me), ')'
      errflg = PD_ERR_INVALID_ARGUMENT
    else if (any(shape(pr_fine) /= inst%fcounts(:, me))) then
      write (errmsg, '(a,i0,a,i0,a,i0,a,i0,a)') 'precipdiff_mpi_get_output: pr_fine has shape (', &
           size(pr_fine, 1), ', ', size(pr_fine, 2), ') but this rank''s fine block is (', &
           inst%fcounts(1, me), ', ', inst%fcounts(2, me), ')'
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
      write (errmsg, '(a,i0,a,i0,a,i0,a,i0,a)') 'precipdiff_mpi_fine_coords: got ', &
           size(lon_fine), ' longitudes and ', size(lat_fine), &
           ' latitudes for a fine block of ', c(1), ' x ', c(2), ' cells'
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

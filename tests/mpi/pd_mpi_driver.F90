!> A decomposed stand-in ESM driving the real plugin through module precipdiff_mpi.
!!
!! Used by tests/mpi/run_mpi_real.py (ctest) and bench/bench_coupled_scale.py.
!! Arguments are key=value pairs:
!!   nml=FILE          namelist with &precipdiff_nml (required)
!!   nlon=, nlat=      global cell-centred grid (default 90 x 45, 4 degrees)
!!   first=, last=     first and last step to run (1-based; default 1, 8)
!!   dt=               timestep in s (default 21600)
!!   out=PREFIX        each rank appends its blocks of every closed window to PREFIX_rR.bin
!!   read_restart=F    read this restart before the first step
!!   write_restart=F   write this restart after the last step
!!   work=N            synthetic ESM work per step (N relaxation sweeps over the block),
!!                     timed separately from the plugin calls (benchmarks)
!!   inference_rank=R  rank running the plugin (default 0)
!!   inference=MODE    'root' (default) or 'per_node' (one inference rank per node,
!!                     members split across them)
!!   ranks_per_inference=N  with per_node: groups of N consecutive ranks stand for nodes
!! The fields are analytic functions of the global cell and the time, so every
!! decomposition feeds the plugin the same global arrays. Prints one line
!! "TIMING rank esm_s plugin_s gather_s python_s scatter_s wait_s checksum steps" per rank and
!! "ERRFLG code message" on failure (exit status 1).
program pd_mpi_driver
  use mpi_f08
  use precipdiff, only: PD_NO_HANDLE, PD_ERRMSG_LEN
  use precipdiff_mpi
  implicit none
  type(MPI_Comm) :: comm
  integer :: rank, nranks, ierr, h, errflg, nlon, nlat, first, last, work, iroot, i, k, step
  integer :: s(2), c(2), nl, nt, nlf, ntf, fs(2), nreq, u, sweep
  real(8) :: dt, t0, t_esm, t_plugin, tg, tp, ts, tw
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: arg, nml, out, rrestart, wrestart, fname
  character(len=32) :: infer_mode
  integer :: rpi
  character(len=32) :: req(16)
  real(8), allocatable :: glon(:), glat(:), f(:, :), pr_fine(:, :), pr_model(:, :), state(:, :)
  logical :: ready
  integer :: nsteps

  call MPI_Init(ierr)
  call MPI_Comm_dup(MPI_COMM_WORLD, comm, ierr)
  call MPI_Comm_rank(comm, rank, ierr)
  call MPI_Comm_size(comm, nranks, ierr)
  nml = ''
  out = ''
  rrestart = ''
  wrestart = ''
  nlon = 90
  nlat = 45
  first = 1
  last = 8
  dt = 21600.0d0
  work = 0
  iroot = 0
  infer_mode = ''
  rpi = 0
  do i = 1, command_argument_count()
    call get_command_argument(i, arg)
    k = index(arg, '=')
    select case (arg(1:k - 1))
    case ('nml')
      nml = arg(k + 1:)
    case ('out')
      out = arg(k + 1:)
    case ('read_restart')
      rrestart = arg(k + 1:)
    case ('write_restart')
      wrestart = arg(k + 1:)
    case ('nlon')
      read (arg(k + 1:), *) nlon
    case ('nlat')
      read (arg(k + 1:), *) nlat
    case ('first')
      read (arg(k + 1:), *) first
    case ('last')
      read (arg(k + 1:), *) last
    case ('dt')
      read (arg(k + 1:), *) dt
    case ('work')
      read (arg(k + 1:), *) work
    case ('inference_rank')
      read (arg(k + 1:), *) iroot
    case ('inference')
      infer_mode = arg(k + 1:)
    case ('ranks_per_inference')
      read (arg(k + 1:), *) rpi
    case default
      if (rank == 0) write (*, '(a,a)') 'pd_mpi_driver: unknown argument ', trim(arg)
      call MPI_Abort(comm, 2, ierr)
    end select
  end do

  allocate (glon(nlon), glat(nlat))
  glon = [((i - 0.5d0)*360.0d0/nlon, i = 1, nlon)]
  glat = [(-90.0d0 + (i - 0.5d0)*180.0d0/nlat, i = 1, nlat)]
  call decompose(rank, nranks, nlon, nlat, s, c)

  h = PD_NO_HANDLE
  if (len_trim(infer_mode) > 0) then
    call precipdiff_mpi_init(h, trim(nml), glon(s(1):s(1) + c(1) - 1), &
         glat(s(2):s(2) + c(2) - 1), s, [nlon, nlat], comm, errmsg, errflg, &
         inference_rank=iroot, inference=trim(infer_mode), ranks_per_inference=rpi)
  else
    call precipdiff_mpi_init(h, trim(nml), glon(s(1):s(1) + c(1) - 1), &
         glat(s(2):s(2) + c(2) - 1), s, [nlon, nlat], comm, errmsg, errflg, inference_rank=iroot)
  end if
  call check('precipdiff_mpi_init')
  call precipdiff_mpi_shapes(h, nl, nt, nlf, ntf, errmsg, errflg, fine_start=fs)
  call check('precipdiff_mpi_shapes')
  call precipdiff_mpi_required_fields(h, req, nreq, errmsg, errflg)
  call check('precipdiff_mpi_required_fields')
  allocate (f(c(1), c(2)), pr_model(nl, nt), pr_fine(nlf, ntf), state(c(1), c(2)))
  state = 0
  if (len_trim(rrestart) > 0) then
    call precipdiff_mpi_read_restart(h, trim(rrestart), errmsg, errflg)
    call check('precipdiff_mpi_read_restart')
  end if
  if (len_trim(out) > 0) then
    write (fname, '(a,a,i0,a)') trim(out), '_r', rank, '.bin'
    open (newunit=u, file=trim(fname), access='stream', form='unformatted', status='replace')
  end if

  t_esm = 0
  t_plugin = 0
  do step = first, last
    t0 = MPI_Wtime()
    do sweep = 1, work
      ! Synthetic model work: a relaxation sweep over the local block.
      state = 0.999d0*state + 0.001d0*cos(state + real(sweep, 8))
    end do
    t_esm = t_esm + (MPI_Wtime() - t0)
    t0 = MPI_Wtime()
    do k = 1, min(nreq, size(req))
      call field(trim(req(k)), step*dt, f)
      call precipdiff_mpi_set_field(h, trim(req(k)), f, errmsg, errflg)
      call check('precipdiff_mpi_set_field('//trim(req(k))//')')
    end do
    call precipdiff_mpi_run(h, step*dt, dt, pr_fine, pr_model, ready, errmsg, errflg)
    call check('precipdiff_mpi_run')
    t_plugin = t_plugin + (MPI_Wtime() - t0)
    if (ready .and. len_trim(out) > 0) then
      write (u) step, s, c, fs, [nlf, ntf]
      write (u) pr_model, pr_fine
    end if
  end do
  if (len_trim(out) > 0) close (u)
  if (len_trim(wrestart) > 0) then
    call precipdiff_mpi_write_restart(h, trim(wrestart), errmsg, errflg)
    call check('precipdiff_mpi_write_restart')
  end if
  call precipdiff_mpi_timers(h, tg, tp, ts, tw, nsteps, errmsg, errflg)
  write (*, '(a,i0,7(1x,es12.5),1x,i0)') 'TIMING ', rank, t_esm, t_plugin, tg, tp, ts, tw, &
       sum(state), nsteps
  call precipdiff_mpi_finalize(h, errmsg, errflg)
  call check('precipdiff_mpi_finalize')
  call MPI_Comm_free(comm, ierr)
  call MPI_Finalize(ierr)

contains

  !> On failure: print the (rank-agreed) error and leave cleanly with status 1.
  subroutine check(what)
    character(len=*), intent(in) :: what
    if (errflg == 0) return
    write (*, '(a,i0,1x,a,a,a)') 'ERRFLG ', errflg, what, ': ', trim(errmsg)
    call MPI_Finalize(ierr)
    stop 1
  end subroutine check

  !> Uneven blocks: 4 ranks in 2 x 2 (2/5 of the longitudes, 3/5 of the latitudes),
  !! otherwise latitude bands with sizes in the ratio 1 : 2 : 3 : ...
  subroutine decompose(r, n, nx, ny, s, c)
    integer, intent(in) :: r, n, nx, ny
    integer, intent(out) :: s(2), c(2)
    integer :: cut_x, cut_y, j, w, acc
    if (n == 4) then
      cut_x = (2*nx)/5
      cut_y = (3*ny)/5
      s = [merge(1, cut_x + 1, mod(r, 2) == 0), merge(1, cut_y + 1, r < 2)]
      c = [merge(cut_x, nx - cut_x, mod(r, 2) == 0), merge(cut_y, ny - cut_y, r < 2)]
      return
    end if
    w = n*(n + 1)/2
    acc = 0
    do j = 0, r - 1
      acc = acc + ((j + 1)*ny)/w
    end do
    s = [1, acc + 1]
    c = [nx, ((r + 1)*ny)/w]
    if (r == n - 1) c(2) = ny - acc
  end subroutine decompose

  !> Analytic field by name on this rank's block at time t (s).
  subroutine field(name, t, v)
    character(len=*), intent(in) :: name
    real(8), intent(in) :: t
    real(8), intent(out) :: v(:, :)
    integer :: i, j
    real(8) :: x, y, ph
    ph = 2.0d0*acos(-1.0d0)*t/(5.0d0*86400.0d0)
    do j = 1, c(2)
      y = glat(s(2) + j - 1)*acos(-1.0d0)/180.0d0
      do i = 1, c(1)
        x = glon(s(1) + i - 1)*acos(-1.0d0)/180.0d0
        select case (name(1:min(len(name), 2)))
        case ('ms', 'ps')
          v(i, j) = 101325.0d0 + 1500.0d0*sin(2*x - ph)*cos(y) + 800.0d0*cos(3*y + ph)
        case ('u1', 'ua')
          v(i, j) = 8.0d0*cos(y)**2 + 4.0d0*sin(x + 2*y - ph)
        case ('v1', 'va')
          v(i, j) = 3.0d0*sin(2*x + ph)*cos(y)
        case ('hu', 'q8', 'q_')
          v(i, j) = 0.012d0*cos(y)**2 + 0.002d0*sin(x - ph)*cos(y)
        case default
          v(i, j) = 280.0d0 + 20.0d0*cos(y) + 2.0d0*sin(x + ph)
        end select
      end do
    end do
  end subroutine field

end program pd_mpi_driver

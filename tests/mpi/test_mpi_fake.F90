!> MPI layer with the deterministic fake plugin, on 1-4 ranks with uneven blocks:
!! gathered fields and scattered outputs are exact, 3-D and real(4) fields,
!! restarts, an inference rank other than 0, only the inference rank starts
!! Python, and every failure (bad arguments on one rank, Python exception,
!! simulated GPU out-of-memory, corrupt bundle, missing restart file, blocks
!! that do not tile the grid) returns the same errflg on every rank without a hang.
!! Argument 1: tests/fortran (fake namelists); argument 2: tests/mpi.
program test_mpi_fake
  use mpi_f08
  use, intrinsic :: iso_c_binding, only: c_int
  use precipdiff, only: PD_NO_HANDLE, PD_ERRMSG_LEN, PD_ERR_INVALID_ARGUMENT, PD_ERR_INPUT, &
       PD_ERR_BUNDLE, PD_ERR_CONFIG, PD_ERR_PYTHON, PD_ERR_DEVICE
  use precipdiff_mpi
  use pd_test_utils
  implicit none

  interface
    integer(c_int) function pd_plugin_count(count) bind(c, name="pd_plugin_count")
      import :: c_int
      integer(c_int), intent(out) :: count
    end function pd_plugin_count
  end interface

  integer, parameter :: gnx = 10, gny = 7, refine = 4
  type(MPI_Comm) :: comm
  integer :: rank, nranks, ierr, h, h2, errflg, s(2), c(2), nl, nt, nlf, ntf, i, j, step
  integer :: gm(2), gf(2), fs(2), nn, ncount
  integer(c_int) :: cnt
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=512) :: fdir, mdir, nml
  character(len=16) :: names(4)
  character(len=40) :: rank_tag
  real(8) :: glon(gnx), glat(gny)
  real(8), allocatable :: q(:, :), expect(:, :), pr_model(:, :), pr_fine(:, :), q3(:, :, :), p3(:, :, :)
  real(8), allocatable :: keep_model(:, :), keep_fine(:, :), wrong(:, :), lonf(:), latf(:)
  real(4), allocatable :: p4(:, :)
  real(8) :: tg, tp, ts, tw
  logical :: ready

  call MPI_Init(ierr)
  ! A private communicator: the layer must not assume MPI_COMM_WORLD.
  call MPI_Comm_split(MPI_COMM_WORLD, 7, 0, comm, ierr)
  call MPI_Comm_rank(comm, rank, ierr)
  call MPI_Comm_size(comm, nranks, ierr)
  call get_command_argument(1, fdir)
  call get_command_argument(2, mdir)
  nml = trim(fdir)//'/fake.nml'
  glon = [(36.0d0*(i - 1), i = 1, gnx)]
  glat = [(-60.0d0 + 20.0d0*(j - 1), j = 1, gny)]
  call decompose(rank, nranks, s, c)
  allocate (q(c(1), c(2)), p4(c(1), c(2)), expect(c(1), c(2)), pr_model(c(1), c(2)))
  allocate (pr_fine(refine*c(1), refine*c(2)), wrong(c(1) + 1, c(2)))

  ! ---------------------------------------------------------------- init
  h = PD_NO_HANDLE
  call precipdiff_mpi_init(h, trim(nml), glon(s(1):s(1) + c(1) - 1), glat(s(2):s(2) + c(2) - 1), &
       s, [gnx, gny], comm, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'init on every rank')
  call check(h /= PD_NO_HANDLE, 'init returns a handle')
  call precipdiff_mpi_shapes(h, nl, nt, nlf, ntf, errmsg, errflg, global_model=gm, &
       global_fine=gf, fine_start=fs)
  call expect_ok(errflg, errmsg, 'shapes')
  call check(nl == c(1) .and. nt == c(2), 'local model shape is the block')
  call check(all(gm == [gnx, gny]) .and. all(gf == refine*[gnx, gny]), 'global shapes')
  call check(nlf == refine*c(1) .and. ntf == refine*c(2) .and. all(fs == refine*(s - 1) + 1), &
       'fine block is the refined model block')
  allocate (lonf(nlf), latf(ntf))
  call precipdiff_mpi_fine_coords(h, lonf, latf, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'fine coords')
  call check(all(lonf(2:) > lonf(:nlf - 1)) .and. all(latf(2:) > latf(:ntf - 1)), &
       'fine coordinates increase within the block')
  call precipdiff_mpi_required_fields(h, names, nn, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'required fields')
  call check(nn == 2 .and. names(1) == 'hus850' .and. names(2) == 'psl', &
       'required fields known on every rank')
  ! Only the inference rank started Python.
  ierr = pd_plugin_count(cnt)
  call check((rank == 0 .and. cnt == 1) .or. (rank /= 0 .and. cnt == 0), &
       'only the inference rank holds a plugin')

  ! ------------------------------------------------- exact outputs, 2 windows
  do step = 1, 4
    call fields(step, s, c, q, p4)
    call precipdiff_mpi_set_field(h, 'hus850', q, errmsg, errflg)
    call expect_ok(errflg, errmsg, 'set_field real(8)')
    call precipdiff_mpi_set_field(h, 'psl', p4, errmsg, errflg)
    call expect_ok(errflg, errmsg, 'set_field real(4)')
    call precipdiff_mpi_run(h, 3600.0d0*step, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
    call expect_ok(errflg, errmsg, 'run')
    call check(ready .eqv. (mod(step, 2) == 0), 'ready every second step on every rank')
    if (ready) then
      call expected(step, s, c, expect)
      call check(all(pr_model == expect), 'pr_model block is exact')
      call check(all(pr_fine == kron(expect)), 'pr_fine block is exact')
    end if
  end do

  ! ------------------------------------------------------ 3-D field (nearest 850 hPa)
  allocate (q3(c(1), c(2), 3), p3(c(1), c(2), 3))
  p3(:, :, 1) = 100000.0d0
  p3(:, :, 2) = 85000.0d0
  p3(:, :, 3) = 50000.0d0
  call fields(5, s, c, q, p4)
  q3(:, :, 1) = -1.0d0
  q3(:, :, 2) = q
  q3(:, :, 3) = -2.0d0
  call precipdiff_mpi_set_field(h, 'hus850', q3, p3, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'set_field 3-D')
  call precipdiff_mpi_set_field(h, 'psl', p4, errmsg, errflg)
  call precipdiff_mpi_step(h, 5*3600.0d0, 3600.0d0, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'step after 3-D field')

  ! ---------------------------------- restart mid-window: 5 + restart + 1 == 6
  call precipdiff_mpi_write_restart(h, 'mpi_fake_restart.json', errmsg, errflg)
  call expect_ok(errflg, errmsg, 'write restart')
  call fields(6, s, c, q, p4)
  call precipdiff_mpi_set_field(h, 'hus850', q, errmsg, errflg)
  call precipdiff_mpi_set_field(h, 'psl', p4, errmsg, errflg)
  call precipdiff_mpi_run(h, 6*3600.0d0, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call check(ready .and. errflg == 0, 'window 3 closes')
  allocate (keep_model, source=pr_model)
  allocate (keep_fine, source=pr_fine)
  call precipdiff_mpi_read_restart(h, 'mpi_fake_restart.json', errmsg, errflg)
  call expect_ok(errflg, errmsg, 'read restart')
  call precipdiff_mpi_set_field(h, 'hus850', q, errmsg, errflg)
  call precipdiff_mpi_set_field(h, 'psl', p4, errmsg, errflg)
  pr_model = -1
  call precipdiff_mpi_run(h, 6*3600.0d0, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  call check(ready .and. errflg == 0, 'window 3 closes again after the restart')
  call check(all(pr_model == keep_model) .and. all(pr_fine == keep_fine), &
       'restart reproduces the window bit for bit')

  ! ----------------------------------------------------------------- failures
  write (rank_tag, '(a,i0,a)') 'rank ', nranks - 1, ':'
  ! (a) Bad shape on the last rank only: every rank fails, naming that rank.
  if (rank == nranks - 1) then
    wrong = 1.0d0
    call precipdiff_mpi_set_field(h, 'hus850', wrong, errmsg, errflg)
  else
    call precipdiff_mpi_set_field(h, 'hus850', q, errmsg, errflg)
  end if
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: rank_tag, &
       'hus850', 'block'], 'wrong shape on one rank fails on every rank')
  ! (b) Python error on the inference rank (unknown field).
  call precipdiff_mpi_set_field(h, 'no_such_field', q, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_INPUT, [character(len=40) :: 'rank 0:', &
       'no_such_field'], 'Python InputError reaches every rank')
  ! (c) Missing restart file.
  call precipdiff_mpi_read_restart(h, 'no/such/restart.nc', errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_CONFIG, [character(len=40) :: 'no/such/restart.nc'], &
       'missing restart file reported on every rank')
  ! The instance still works after the errors.
  call fields(7, s, c, q, p4)
  call precipdiff_mpi_set_field(h, 'hus850', q, errmsg, errflg)
  call precipdiff_mpi_set_field(h, 'psl', p4, errmsg, errflg)
  call precipdiff_mpi_step(h, 7*3600.0d0, 3600.0d0, ready, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'a correct step after the errors')
  call precipdiff_mpi_timers(h, tg, tp, ts, tw, ncount, errmsg, errflg)
  call check(errflg == 0 .and. ncount >= 7 .and. tg >= 0 .and. tp >= 0 .and. ts >= 0, 'timers')
  call precipdiff_mpi_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize')
  call check(h == PD_NO_HANDLE, 'finalize resets the handle')
  call precipdiff_mpi_finalize(h, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize is idempotent')

  ! (d) Python exception and simulated GPU OOM inside step.
  call failing_step(trim(mdir)//'/fail_python.nml', PD_ERR_PYTHON, 'simulated Python failure')
  call failing_step(trim(mdir)//'/fail_oom.nml', PD_ERR_DEVICE, 'GPU out of memory')

  ! (e) Corrupt bundle at init: no handle anywhere.
  h2 = PD_NO_HANDLE
  call precipdiff_mpi_init(h2, trim(fdir)//'/fake_bundle_error.nml', &
       glon(s(1):s(1) + c(1) - 1), glat(s(2):s(2) + c(2) - 1), s, [gnx, gny], comm, errmsg, errflg)
  call expect_error(errflg, errmsg, PD_ERR_BUNDLE, [character(len=40) :: 'rank 0:', 'BundleError'], &
       'bundle error at init on every rank')
  call check(h2 == PD_NO_HANDLE, 'failed init leaves PD_NO_HANDLE')

  ! (f) Blocks that do not tile the global grid (each rank claims the whole grid).
  if (nranks > 1) then
    call precipdiff_mpi_init(h2, trim(nml), glon, glat, [1, 1], [gnx, gny], comm, errmsg, errflg)
    call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: 'tile'], &
         'overlapping blocks refused on every rank')
  end if
  ! (g) Block outside the grid on rank 0 only.
  if (rank == 0) then
    call precipdiff_mpi_init(h2, trim(nml), glon(1:2), glat(1:2), [gnx, gny], [gnx, gny], comm, &
         errmsg, errflg)
  else
    call precipdiff_mpi_init(h2, trim(nml), glon(s(1):s(1) + c(1) - 1), &
         glat(s(2):s(2) + c(2) - 1), s, [gnx, gny], comm, errmsg, errflg)
  end if
  call expect_error(errflg, errmsg, PD_ERR_INVALID_ARGUMENT, [character(len=40) :: 'rank 0:', &
       'does not fit'], 'block outside the grid refused on every rank')

  ! ---------------------------------------------- inference on the last rank
  h2 = PD_NO_HANDLE
  call precipdiff_mpi_init(h2, trim(nml), glon(s(1):s(1) + c(1) - 1), glat(s(2):s(2) + c(2) - 1), &
       s, [gnx, gny], comm, errmsg, errflg, inference_rank=nranks - 1)
  call expect_ok(errflg, errmsg, 'init with inference on the last rank')
  call precipdiff_mpi_inference_rank(h2, i, errmsg, errflg)
  call check(i == nranks - 1, 'inference rank reported')
  do step = 1, 2
    call fields(step, s, c, q, p4)
    call precipdiff_mpi_set_field(h2, 'hus850', q, errmsg, errflg)
    call precipdiff_mpi_set_field(h2, 'psl', p4, errmsg, errflg)
    call precipdiff_mpi_run(h2, 3600.0d0*step, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
  end do
  call expected(2, s, c, expect)
  call check(ready .and. all(pr_model == expect) .and. all(pr_fine == kron(expect)), &
       'same exact output with inference on the last rank')
  call precipdiff_mpi_finalize(h2, errmsg, errflg)
  call expect_ok(errflg, errmsg, 'finalize (last-rank inference)')

  call MPI_Comm_free(comm, ierr)
  call MPI_Finalize(ierr)
  call finish()

contains

  !> Uneven blocks: 2 ranks split longitudes 3 + 7, 3 ranks split the 7 rows 3 + 1 + 3,
  !! 4 ranks a 2 x 2 layout (6 + 4 longitudes, 4 + 3 rows) numbered out of order.
  subroutine decompose(r, n, s, c)
    integer, intent(in) :: r, n
    integer, intent(out) :: s(2), c(2)
    integer, parameter :: rows3(3) = [3, 1, 3]
    select case (n)
    case (1)
      s = [1, 1]
      c = [gnx, gny]
    case (2)
      if (r == 0) then
        s = [1, 1]
        c = [3, gny]
      else
        s = [4, 1]
        c = [7, gny]
      end if
    case (3)
      s = [1, 1 + sum(rows3(1:r))]
      c = [gnx, rows3(r + 1)]
    case default
      ! rank 0 owns the last block, rank 3 the first.
      select case (r)
      case (3)
        s = [1, 1]
        c = [6, 4]
      case (2)
        s = [7, 1]
        c = [4, 4]
      case (1)
        s = [1, 5]
        c = [6, 3]
      case default
        s = [7, 5]
        c = [4, 3]
      end select
    end select
  end subroutine decompose

  !> Deterministic fields of a step on a block (exact binary values).
  subroutine fields(step, s, c, q, p)
    integer, intent(in) :: step, s(2), c(2)
    real(8), intent(out) :: q(:, :)
    real(4), intent(out) :: p(:, :)
    integer :: i, j
    do j = 1, c(2)
      do i = 1, c(1)
        q(i, j) = (s(1) + i - 1) + 100.0d0*(s(2) + j - 1) + 0.25d0*step
        p(i, j) = real(1.0d5 + 3.0d0*(s(1) + i - 1) - (s(2) + j - 1) + 0.5d0*step, 4)
      end do
    end do
  end subroutine fields

  !> The fake plugin's output for the window ending at step (two steps), same operations.
  subroutine expected(step, s, c, out)
    integer, intent(in) :: step, s(2), c(2)
    real(8), intent(out) :: out(:, :)
    real(8) :: sq(c(1), c(2)), sp(c(1), c(2)), q(c(1), c(2))
    real(4) :: p(c(1), c(2))
    sq = 0
    sp = 0
    call fields(step - 1, s, c, q, p)
    sq = sq + q
    sp = sp + real(p, 8)
    call fields(step, s, c, q, p)
    sq = sq + q
    sp = sp + real(p, 8)
    out = 0
    out = out + sq/2
    out = out + sp/2
  end subroutine expected

  !> The fake plugin's fine output: each model cell repeated refine x refine.
  function kron(a) result(b)
    real(8), intent(in) :: a(:, :)
    real(8) :: b(refine*size(a, 1), refine*size(a, 2))
    integer :: i, j
    do j = 1, size(b, 2)
      do i = 1, size(b, 1)
        b(i, j) = a((i - 1)/refine + 1, (j - 1)/refine + 1)
      end do
    end do
  end function kron

  !> A plugin whose step raises at 3 h: every rank gets code, then finalizes.
  subroutine failing_step(path, code, needle)
    character(len=*), intent(in) :: path, needle
    integer, intent(in) :: code
    integer :: hf, st
    hf = PD_NO_HANDLE
    call precipdiff_mpi_init(hf, path, glon(s(1):s(1) + c(1) - 1), glat(s(2):s(2) + c(2) - 1), &
         s, [gnx, gny], comm, errmsg, errflg)
    call expect_ok(errflg, errmsg, 'init '//path)
    do st = 1, 3
      call fields(st, s, c, q, p4)
      call precipdiff_mpi_set_field(hf, 'hus850', q, errmsg, errflg)
      call precipdiff_mpi_set_field(hf, 'psl', p4, errmsg, errflg)
      call precipdiff_mpi_run(hf, 3600.0d0*st, 3600.0d0, pr_fine, pr_model, ready, errmsg, errflg)
    end do
    call expect_error(errflg, errmsg, code, [character(len=40) :: 'rank 0:', needle], &
         'failure in step reaches every rank ('//path//')')
    call check(.not. ready, 'ready is false after the failure')
    call precipdiff_mpi_finalize(hf, errmsg, errflg)
    call expect_ok(errflg, errmsg, 'finalize after the failure')
  end subroutine failing_step

end program test_mpi_fake

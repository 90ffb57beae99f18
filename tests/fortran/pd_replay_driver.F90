!> Replay driver used by tests/python/test_bridge_plugin.py and the bridge benchmark:
!! feeds recorded fields through the Fortran API exactly as an ESM would, writes
!! each ready window's outputs to a binary file, and reports every error on stdout
!! (lines "ERRFLG <n>" / "ERRMSG <text>") before finalizing and exiting 0 (the host
!! continues after an error).
!!
!! Usage: pd_replay_driver NML INPUT OUTPUT KIND [REPEAT]
!!   INPUT  (stream, native endian): int32 nlon, nlat, nfield, nstep; float64 dt;
!!          float64 lon(nlon), lat(nlat); nfield names of 16 characters;
!!          then per step float64 fields(nlon, nlat, nfield).
!!   OUTPUT (stream): per ready window int32 step, float64 pr_fine, float64 pr_model.
!!   KIND   4 or 8: precision in which the fields are handed to precipdiff.
!!   REPEAT replay the steps this many times (benchmark), default 1.
program pd_replay_driver
  use precipdiff
  implicit none
  integer :: h = PD_NO_HANDLE, errflg, nlon, nlat, nfield, nstep, kind, s, k, repeat, rep
  integer :: in_unit, out_unit, nl, nt, nlf, ntf, ios, count0, count1, rate
  character(len=PD_ERRMSG_LEN) :: errmsg
  character(len=1024) :: nml, input, output, arg
  character(len=16), allocatable :: names(:)
  real(8) :: dt, t
  real(8), allocatable :: lon(:), lat(:), fields(:, :, :, :), pr_fine(:, :), pr_model(:, :)
  real(4), allocatable :: fields4(:, :, :)
  logical :: ready

  call get_command_argument(1, nml)
  call get_command_argument(2, input)
  call get_command_argument(3, output)
  call get_command_argument(4, arg)
  read (arg, *) kind
  repeat = 1
  if (command_argument_count() >= 5) then
    call get_command_argument(5, arg)
    read (arg, *) repeat
  end if

  open (newunit=in_unit, file=trim(input), access='stream', form='unformatted', &
       status='old', action='read', iostat=ios)
  if (ios /= 0) error stop 'cannot open input'
  read (in_unit) nlon, nlat, nfield, nstep, dt
  allocate (lon(nlon), lat(nlat), names(nfield), fields(nlon, nlat, nfield, nstep))
  read (in_unit) lon, lat, names, fields
  close (in_unit)
  allocate (fields4(nlon, nlat, nfield))

  call system_clock(count0, rate)
  call precipdiff_init(h, trim(nml), lon, lat, errmsg, errflg)
  call system_clock(count1)
  write (*, '(a,f12.6)') 'INIT_S ', real(count1 - count0, 8)/rate
  if (report(errflg, errmsg)) goto 900
  call precipdiff_shapes(h, nl, nt, nlf, ntf, errmsg, errflg)
  if (report(errflg, errmsg)) goto 900
  allocate (pr_fine(nlf, ntf), pr_model(nl, nt))
  pr_fine = 0
  pr_model = 0

  open (newunit=out_unit, file=trim(output), access='stream', form='unformatted', &
       status='replace', action='write')
  call system_clock(count0)
  do rep = 1, repeat
    do s = 1, nstep
      t = ((rep - 1)*nstep + s)*dt
      if (kind == 4) then
        fields4 = real(fields(:, :, :, s), 4)
        do k = 1, nfield
          call precipdiff_set_field(h, trim(names(k)), fields4(:, :, k), errmsg, errflg)
          if (report(errflg, errmsg)) goto 800
        end do
      else
        do k = 1, nfield
          call precipdiff_set_field(h, trim(names(k)), fields(:, :, k, s), errmsg, errflg)
          if (report(errflg, errmsg)) goto 800
        end do
      end if
      call precipdiff_run(h, t, dt, pr_fine, pr_model, ready, errmsg, errflg)
      if (report(errflg, errmsg)) goto 800
      if (ready) write (out_unit) int(s, 4), pr_fine, pr_model
    end do
  end do
  call system_clock(count1)
  write (*, '(a,f14.6)') 'RUN_S ', real(count1 - count0, 8)/rate
  write (*, '(a,i0)') 'CALLS ', repeat*nstep
800 close (out_unit)
900 call precipdiff_finalize(h, errmsg, errflg)
  if (report(errflg, errmsg)) continue
  write (*, '(a)') 'DRIVER_DONE'

contains

  !> Print a failed call's flag and message; true when the call failed.
  logical function report(flag, msg)
    integer, intent(in) :: flag          !! errflg of the call
    character(len=*), intent(in) :: msg  !! errmsg of the call
    report = flag /= 0
    if (report) then
      write (*, '(a,i0)') 'ERRFLG ', flag
      write (*, '(a,a)') 'ERRMSG ', trim(msg)
    end if
  end function report
end program pd_replay_driver

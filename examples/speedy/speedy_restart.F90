!> Restart files of SPEEDY's state for the precipdiff driver (netCDF, double precision).
!>
!> A restart is written at the end of a day (after the land/sea coupling of the day's
!> last step). It holds everything that carries information from one day to the next:
!> both leapfrog time levels of the spectral prognostics (vorticity, divergence,
!> temperature, log surface pressure, humidity), the land-model surface temperature and
!> the sea/sea-ice model state with the surface fields handed to the atmosphere, the
!> date and the step counter, and the driver's column condensate (interactive mode). Everything else in SPEEDY is either constant or recomputed
!> before use on the first step of a day (daily forcing, shortwave radiation, fluxes), so
!> N days straight equal N/2 days + restart + N/2 days bit for bit (ctest speedy_*).
!>
!> The land/sea prognostic fields stl_lm, sst_om, sice_om, tice_om are private in
!> SPEEDY; examples/speedy/speedy_restart_state.patch (applied at build time, never to
!> the source tree) makes them public and changes nothing else.
module speedy_restart
  use netcdf
  use types, only: p
  use params, only: ix, il, kx, mx, nx, ntr
  implicit none
  private

  public :: restart_write, restart_read_header, restart_read

contains

  !> Write the current state (model_step: steps done since the experiment's reference
  !> date; day: days done since it).
  subroutine restart_write(path, model_step, day, cond, errmsg, errflg)
    use prognostics, only: vor, div, t, ps, tr
    use land_model, only: stl_lm, stl_am, snowd_am, soilw_am
    use sea_model, only: sst_om, sice_om, tice_om, sst_am, sice_am, tice_am, ssti_om
    use date, only: model_datetime
    character(len=*), intent(in) :: path
    integer, intent(in) :: model_step, day
    real(p), intent(in) :: cond(ix, il)   !< the driver's column condensate (interactive mode)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ncid, dm, dn, dk, dl, dx, dy, dtr
    integer :: v(32), nv
    errflg = 0
    errmsg = ''
    call chk(nf90_create(path, ior(NF90_CLOBBER, NF90_NETCDF4), ncid), 'create')
    if (errflg /= 0) return
    call chk(nf90_def_dim(ncid, 'm', mx, dm), 'dim m')
    call chk(nf90_def_dim(ncid, 'n', nx, dn), 'dim n')
    call chk(nf90_def_dim(ncid, 'lev', kx, dk), 'dim lev')
    call chk(nf90_def_dim(ncid, 'time_level', 2, dl), 'dim time_level')
    call chk(nf90_def_dim(ncid, 'tracer', ntr, dtr), 'dim tracer')
    call chk(nf90_def_dim(ncid, 'lon', ix, dx), 'dim lon')
    call chk(nf90_def_dim(ncid, 'lat', il, dy), 'dim lat')
    nv = 0
    call def4('vor_re')
    call def4('vor_im')
    call def4('div_re')
    call def4('div_im')
    call def4('t_re')
    call def4('t_im')
    call def3('ps_re')
    call def3('ps_im')
    call def5('tr_re')
    call def5('tr_im')
    call def2('stl_lm')
    call def2('stl_am')
    call def2('snowd_am')
    call def2('soilw_am')
    call def2('sst_om')
    call def2('sice_om')
    call def2('tice_om')
    call def2('sst_am')
    call def2('sice_am')
    call def2('tice_am')
    call def2('ssti_om')
    call def2('condensate')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'year', model_datetime%year), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'month', model_datetime%month), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'day', model_datetime%day), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'hour', model_datetime%hour), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'minute', model_datetime%minute), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'model_step', model_step), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'days_done', day), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'title', &
         'SPEEDY state for examples/speedy/speedy_precipdiff (precipdiff)'), 'att')
    call chk(nf90_put_att(ncid, NF90_GLOBAL, 'Conventions', 'CF-1.8'), 'att')
    call chk(nf90_enddef(ncid), 'enddef')
    call chk(nf90_put_var(ncid, v(1), real(vor)), 'vor')
    call chk(nf90_put_var(ncid, v(2), aimag(vor)), 'vor')
    call chk(nf90_put_var(ncid, v(3), real(div)), 'div')
    call chk(nf90_put_var(ncid, v(4), aimag(div)), 'div')
    call chk(nf90_put_var(ncid, v(5), real(t)), 't')
    call chk(nf90_put_var(ncid, v(6), aimag(t)), 't')
    call chk(nf90_put_var(ncid, v(7), real(ps)), 'ps')
    call chk(nf90_put_var(ncid, v(8), aimag(ps)), 'ps')
    call chk(nf90_put_var(ncid, v(9), real(tr)), 'tr')
    call chk(nf90_put_var(ncid, v(10), aimag(tr)), 'tr')
    call chk(nf90_put_var(ncid, v(11), stl_lm), 'stl_lm')
    call chk(nf90_put_var(ncid, v(12), stl_am), 'stl_am')
    call chk(nf90_put_var(ncid, v(13), snowd_am), 'snowd_am')
    call chk(nf90_put_var(ncid, v(14), soilw_am), 'soilw_am')
    call chk(nf90_put_var(ncid, v(15), sst_om), 'sst_om')
    call chk(nf90_put_var(ncid, v(16), sice_om), 'sice_om')
    call chk(nf90_put_var(ncid, v(17), tice_om), 'tice_om')
    call chk(nf90_put_var(ncid, v(18), sst_am), 'sst_am')
    call chk(nf90_put_var(ncid, v(19), sice_am), 'sice_am')
    call chk(nf90_put_var(ncid, v(20), tice_am), 'tice_am')
    call chk(nf90_put_var(ncid, v(21), ssti_om), 'ssti_om')
    call chk(nf90_put_var(ncid, v(22), cond), 'condensate')
    call chk(nf90_close(ncid), 'close')
  contains
    subroutine def2(name)
      character(len=*), intent(in) :: name
      nv = nv + 1
      call chk(nf90_def_var(ncid, name, NF90_DOUBLE, [dx, dy], v(nv)), 'define ' // name)
      call chk(nf90_put_att(ncid, v(nv), 'long_name', 'SPEEDY restart state: ' // name), &
               'long_name ' // name)
    end subroutine def2
    subroutine def3(name)
      character(len=*), intent(in) :: name
      nv = nv + 1
      call chk(nf90_def_var(ncid, name, NF90_DOUBLE, [dm, dn, dl], v(nv)), 'define ' // name)
      call chk(nf90_put_att(ncid, v(nv), 'long_name', 'SPEEDY restart state: ' // name), &
               'long_name ' // name)
    end subroutine def3
    subroutine def4(name)
      character(len=*), intent(in) :: name
      nv = nv + 1
      call chk(nf90_def_var(ncid, name, NF90_DOUBLE, [dm, dn, dk, dl], v(nv)), 'define ' // name)
      call chk(nf90_put_att(ncid, v(nv), 'long_name', 'SPEEDY restart state: ' // name), &
               'long_name ' // name)
    end subroutine def4
    subroutine def5(name)
      character(len=*), intent(in) :: name
      nv = nv + 1
      call chk(nf90_def_var(ncid, name, NF90_DOUBLE, [dm, dn, dk, dl, dtr], v(nv)), 'define ' // name)
      call chk(nf90_put_att(ncid, v(nv), 'long_name', 'SPEEDY restart state: ' // name), &
               'long_name ' // name)
    end subroutine def5
    subroutine chk(code, what)
      integer, intent(in) :: code
      character(len=*), intent(in) :: what
      if (errflg == 0 .and. code /= NF90_NOERR) then
        errflg = 1
        errmsg = 'restart ' // trim(path) // ': ' // what // ': ' // trim(nf90_strerror(code))
      end if
    end subroutine chk
  end subroutine restart_write

  !> The date and counters of a restart file (read before SPEEDY is initialised, whose
  !> start date they become).
  subroutine restart_read_header(path, year, month, day, hour, minute, model_step, days_done, &
                                 errmsg, errflg)
    character(len=*), intent(in) :: path
    integer, intent(out) :: year, month, day, hour, minute, model_step, days_done
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ncid
    errflg = 0
    errmsg = ''
    year = 0
    month = 0
    day = 0
    hour = 0
    minute = 0
    model_step = 0
    days_done = 0
    call chk(nf90_open(path, NF90_NOWRITE, ncid), 'open')
    if (errflg /= 0) return
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'year', year), 'attribute year')
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'month', month), 'attribute month')
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'day', day), 'attribute day')
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'hour', hour), 'attribute hour')
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'minute', minute), 'attribute minute')
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'model_step', model_step), 'attribute model_step')
    call chk(nf90_get_att(ncid, NF90_GLOBAL, 'days_done', days_done), 'attribute days_done')
    call chk(nf90_close(ncid), 'close')
  contains
    subroutine chk(code, what)
      integer, intent(in) :: code
      character(len=*), intent(in) :: what
      if (errflg == 0 .and. code /= NF90_NOERR) then
        errflg = 1
        errmsg = 'restart ' // trim(path) // ': ' // what // ': ' // trim(nf90_strerror(code))
      end if
    end subroutine chk
  end subroutine restart_read_header

  !> Overwrite SPEEDY's state with a restart (after initialize, which set up the constants
  !> and a state at the restart's date).
  subroutine restart_read(path, cond, errmsg, errflg)
    use prognostics, only: vor, div, t, ps, tr
    use land_model, only: stl_lm, stl_am, snowd_am, soilw_am
    use sea_model, only: sst_om, sice_om, tice_om, sst_am, sice_am, tice_am, ssti_om
    character(len=*), intent(in) :: path
    real(p), intent(out) :: cond(ix, il)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer :: ncid
    real(p), allocatable :: re4(:, :, :, :), im4(:, :, :, :), re3(:, :, :), im3(:, :, :)
    real(p), allocatable :: re5(:, :, :, :, :), im5(:, :, :, :, :)
    errflg = 0
    errmsg = ''
    call chk(nf90_open(path, NF90_NOWRITE, ncid), 'open')
    if (errflg /= 0) return
    allocate (re4(mx, nx, kx, 2), im4(mx, nx, kx, 2), re3(mx, nx, 2), im3(mx, nx, 2), &
              re5(mx, nx, kx, 2, ntr), im5(mx, nx, kx, 2, ntr))
    call get4('vor')
    if (errflg == 0) vor = cmplx(re4, im4, kind=p)
    call get4('div')
    if (errflg == 0) div = cmplx(re4, im4, kind=p)
    call get4('t')
    if (errflg == 0) t = cmplx(re4, im4, kind=p)
    call get_var3('ps_re', re3)
    call get_var3('ps_im', im3)
    if (errflg == 0) ps = cmplx(re3, im3, kind=p)
    call get_var5('tr_re', re5)
    call get_var5('tr_im', im5)
    if (errflg == 0) tr = cmplx(re5, im5, kind=p)
    call get2('stl_lm', stl_lm)
    call get2('stl_am', stl_am)
    call get2('snowd_am', snowd_am)
    call get2('soilw_am', soilw_am)
    call get2('sst_om', sst_om)
    call get2('sice_om', sice_om)
    call get2('tice_om', tice_om)
    call get2('sst_am', sst_am)
    call get2('sice_am', sice_am)
    call get2('tice_am', tice_am)
    call get2('ssti_om', ssti_om)
    call get2('condensate', cond)
    call chk(nf90_close(ncid), 'close')
  contains
    subroutine get4(name)
      character(len=*), intent(in) :: name
      integer :: vid
      call chk(nf90_inq_varid(ncid, name // '_re', vid), 'variable ' // name // '_re')
      if (errflg == 0) call chk(nf90_get_var(ncid, vid, re4), 'read ' // name // '_re')
      call chk(nf90_inq_varid(ncid, name // '_im', vid), 'variable ' // name // '_im')
      if (errflg == 0) call chk(nf90_get_var(ncid, vid, im4), 'read ' // name // '_im')
    end subroutine get4
    subroutine get_var3(name, a)
      character(len=*), intent(in) :: name
      real(p), intent(inout) :: a(:, :, :)
      integer :: vid
      call chk(nf90_inq_varid(ncid, name, vid), 'variable ' // name)
      if (errflg == 0) call chk(nf90_get_var(ncid, vid, a), 'read ' // name)
    end subroutine get_var3
    subroutine get_var5(name, a)
      character(len=*), intent(in) :: name
      real(p), intent(inout) :: a(:, :, :, :, :)
      integer :: vid
      call chk(nf90_inq_varid(ncid, name, vid), 'variable ' // name)
      if (errflg == 0) call chk(nf90_get_var(ncid, vid, a), 'read ' // name)
    end subroutine get_var5
    subroutine get2(name, a)
      character(len=*), intent(in) :: name
      real(p), intent(inout) :: a(:, :)
      integer :: vid
      call chk(nf90_inq_varid(ncid, name, vid), 'variable ' // name)
      if (errflg == 0) call chk(nf90_get_var(ncid, vid, a), 'read ' // name)
    end subroutine get2
    subroutine chk(code, what)
      integer, intent(in) :: code
      character(len=*), intent(in) :: what
      if (errflg == 0 .and. code /= NF90_NOERR) then
        errflg = 1
        errmsg = 'restart ' // trim(path) // ': ' // what // ': ' // trim(nf90_strerror(code))
      end if
    end subroutine chk
  end subroutine restart_read

end module speedy_restart

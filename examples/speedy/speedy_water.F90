!> The water budget of the coupled SPEEDY run: column water, the daily interactive
!> column adjustment and the global water fixer.
!>
!> Interactive coupling (docs/speedy.md). SPEEDY's convection and large-scale
!> condensation run every step as usual: they decide where and when vapour condenses and
!> release its latent heat there. What falls out of the column, however, is precipdiff's
!> precipitation. The two are joined by a column condensate reservoir C (kg m-2; the
!> part of the condensed water that has not fallen, like the cloud water of a model with
!> prognostic condensate). When a day closes, precipdiff returns that day's precipitation
!> P_pd (sync inference: generated from the day's own window means) and every column does
!>
!>     C   <- C + (P_speedy - P_pd) * 1 day        SPEEDY condensed P_speedy, P_pd fell;
!>     if C < 0:  the deficit is condensed from the column's vapour (at most max_removal of
!>                it; what is still missing did not fall: `limited`), C <- 0;
!>     else:      a fraction `decay` = 1 - exp(-1 day / tau) of C re-evaporates into the
!>                vapour (tau = condensate_timescale_days; tau = 0: all of it, i.e. the
!>                column's vapour directly takes precipdiff's sink instead of SPEEDY's);
!>                what is left above `condensate_max` (kg m-2) falls as precipitation
!>                (`overflow`: SPEEDY's condensate, not precipdiff's rain), C <- min(C, max).
!>
!> Why the bound (a Kessler-type autoconversion threshold with an infinite rate above it).
!> Without it the reservoir has no sink but precipdiff's rain, whose fine-scale pattern is
!> a sample, not SPEEDY's: where SPEEDY keeps condensing more than precipdiff rains, C
!> grows, its re-evaporation is condensed again by SPEEDY's schemes the next day (SPEEDY's
!> global condensation rose from 2.6 to 22 mm/day in 18 days with models/speedy-t30 from the
!> spin-up restart) and the recycled latent heat warms the upper and cools the lower
!> troposphere until the model blows up (docs/speedy.md, section 6). With the bound the
!> recycled water per column and day is at most decay * condensate_max.
!>
!> The vapour change dv is distributed in proportion to the column's (positive) humidity,
!> keeping its relative vertical profile, and its latent heat (-L dv: condensation heats,
!> re-evaporation cools) is spread uniformly in mass over the layers below the top one
!> (sigma > 0.05). With SPEEDY's own heating (L times its condensation) the column's latent
!> heating over a day is therefore L * (P + change of C), P = P_pd - limited + overflow the
!> precipitation that left: consistent with what fell, the condensate holding no latent
!> heat. The column water that closes every day is vapour + condensate: d(W + C) = E - P.
!>
!> The increments are made on the grid, transformed to spherical harmonics (T30, SPEEDY's
!> triangular truncation) and added to both leapfrog time levels (so the leapfrog's
!> computational mode is not excited). The truncation changes them slightly: the water
!> and heat actually added are measured after the transform and reported.
!>
!> Water fixer. A spectral Eulerian model with a leapfrog scheme and time filter does not
!> conserve water exactly. At the end of every day the humidity of both time levels is
!> multiplied by one factor (1 + eps) so that the global column water equals the start of
!> the day's plus the day's evaporation minus precipitation; the correction is reported as
!> `water_fixer` (its size without the fixer: docs/speedy.md).
module speedy_water
  use types, only: p
  use params, only: ix, il, kx, mx, nx
  use speedy_grid, only: global_mean, column_water
  implicit none
  private

  public :: level_water, apply_water_fixer, column_adjustment, adjustment_t
  public :: LATENT_HEAT

  real(p), parameter :: LATENT_HEAT = 2.501e6_p   !< J kg-1, SPEEDY's alhc (2501 J g-1)

  !> What one daily column adjustment did; global means over the day.
  type :: adjustment_t
    real(p) :: requested = 0.0_p        !< precipdiff's precipitation, kg m-2 (= mm) per day
    real(p) :: removed = 0.0_p          !< precipitation that left the columns (requested -
                                        !< limited + overflow), kg m-2 per day
    real(p) :: limited = 0.0_p          !< requested but not removed (column limit), kg m-2
    real(p) :: overflow = 0.0_p         !< condensate above the bound that fell, kg m-2
    real(p) :: water_intended = 0.0_p   !< global column water change on the grid, kg m-2
    real(p) :: water_applied = 0.0_p    !< the same after the spectral truncation, kg m-2
    real(p) :: heat_intended = 0.0_p    !< global latent-heat correction on the grid, J m-2
    real(p) :: heat_applied = 0.0_p     !< the same after the spectral truncation, J m-2
  end type adjustment_t

contains

  !> Column water (kg m-2) of spectral time level `lev`, as a field and its global mean.
  subroutine level_water(lev, wcol, wglobal)
    use prognostics, only: tr, ps
    use spectral, only: spec_to_grid
    use physical_constants, only: p0
    integer, intent(in) :: lev
    real(p), intent(out) :: wcol(ix, il), wglobal
    real(p), allocatable :: q(:, :, :)
    real(p) :: psg(ix, il)
    integer :: k
    allocate (q(ix, il, kx))
    do k = 1, kx
      q(:, :, k) = 1.0e-3_p * spec_to_grid(tr(:, :, k, lev, 1), 1)
    end do
    psg = p0 * exp(spec_to_grid(ps(:, :, lev), 1))
    wcol = column_water(q, psg)
    wglobal = global_mean(wcol)
  end subroutine level_water

  !> Scale the humidity of both time levels so that the global column water of the newest
  !> level equals `target` (kg m-2). Returns the correction (target - before, kg m-2).
  subroutine apply_water_fixer(target, correction)
    use prognostics, only: tr
    real(p), intent(in) :: target
    real(p), intent(out) :: correction
    real(p) :: wcol(ix, il), before
    call level_water(2, wcol, before)
    correction = target - before
    if (before > 0.0_p) tr(:, :, :, :, 1) = tr(:, :, :, :, 1) * (target / before)
  end subroutine apply_water_fixer

  !> Replace the day's precipitation sink of every column: SPEEDY's `pr_speedy` by
  !> precipdiff's `pr_pd` (both day means, kg m-2 s-1), with the column condensate
  !> reservoir `cond` (kg m-2; see the module documentation). `decay` is the fraction of
  !> the reservoir re-evaporated at the end of this day (1 - exp(-1 day / tau); 1: none
  !> kept). Condensate above `cond_max` (kg m-2) falls at once (`pr_overflow`).
  !> Returns the precipitation that actually left each column (`pr_eff` = pr_pd -
  !> pr_limited + pr_overflow), the part of `pr_pd` that could not leave (`pr_limited`)
  !> and the overflow, all kg m-2 s-1, and the global diagnostics in `adj`.
  subroutine column_adjustment(pr_speedy, pr_pd, max_removal, decay, cond_max, heating, cond, &
                               pr_eff, pr_limited, pr_overflow, adj)
    use prognostics, only: tr, t, ps
    use spectral, only: spec_to_grid, grid_to_spec, trunct
    use geometry, only: dhs
    use physical_constants, only: p0, grav, cp
    real(p), intent(in) :: pr_speedy(ix, il), pr_pd(ix, il)
    real(p), intent(in) :: max_removal   !< largest fraction of a column's vapour condensed at once
    real(p), intent(in) :: decay         !< fraction of the reservoir re-evaporated, [0, 1]
    real(p), intent(in) :: cond_max      !< largest column condensate kept, kg m-2 (>= 0)
    logical, intent(in) :: heating       !< apply the latent heat of the vapour change
    real(p), intent(inout) :: cond(ix, il)
    real(p), intent(out) :: pr_eff(ix, il), pr_limited(ix, il), pr_overflow(ix, il)
    type(adjustment_t), intent(out) :: adj
    real(p), parameter :: day_s = 86400.0_p
    real(p), allocatable :: q(:, :, :)
    real(p) :: psg(ix, il), wpos(ix, il), c_new(ix, il), dv(ix, il), short(ix, il)
    real(p) :: dq(ix, il), back(ix, il), w_applied(ix, il), h_applied(ix, il), mass(ix, il)
    complex(p) :: spec(mx, nx)
    integer :: k

    allocate (q(ix, il, kx))
    do k = 1, kx
      q(:, :, k) = 1.0e-3_p * spec_to_grid(tr(:, :, k, 2, 1), 1)
    end do
    psg = p0 * exp(spec_to_grid(ps(:, :, 2), 1))
    wpos = column_water(max(q, 0.0_p), psg)

    ! Condensate: + SPEEDY's condensation of the day - precipdiff's precipitation.
    c_new = cond + (pr_speedy - pr_pd) * day_s
    ! A deficit is condensed from the vapour (at most max_removal of it); what is still
    ! missing cannot rain (limited). A surplus partly re-evaporates.
    where (c_new < 0.0_p)
      dv = max(c_new, -max_removal * wpos)
      short = dv - c_new
      cond = 0.0_p
    elsewhere
      dv = decay * c_new
      short = 0.0_p
      cond = c_new - dv
    end where
    ! What the reservoir cannot hold falls (autoconversion above a threshold).
    pr_overflow = max(cond - cond_max, 0.0_p) / day_s
    cond = min(cond, cond_max)
    pr_limited = short / day_s
    pr_eff = pr_pd - pr_limited + pr_overflow

    ! The vapour change dv in proportion to the column's humidity; its latent heat -L dv
    ! spread uniformly in mass over the layers below the top one.
    mass = 0.0_p
    do k = 2, kx
      mass = mass + dhs(k) * psg / grav
    end do
    w_applied = 0.0_p
    h_applied = 0.0_p
    do k = 1, kx
      where (wpos > 0.0_p)
        dq = max(q(:, :, k), 0.0_p) * dv / wpos       ! kg kg-1
      elsewhere
        dq = 0.0_p
      end where
      spec = grid_to_spec(1.0e3_p * dq)               ! SPEEDY's humidity is in g kg-1
      call trunct(spec)
      tr(:, :, k, 1, 1) = tr(:, :, k, 1, 1) + spec
      tr(:, :, k, 2, 1) = tr(:, :, k, 2, 1) + spec
      back = 1.0e-3_p * spec_to_grid(spec, 1)
      w_applied = w_applied + dhs(k) * back * psg / grav
      if (heating .and. k >= 2) then
        spec = grid_to_spec(-LATENT_HEAT * dv / (cp * mass))
        call trunct(spec)
        t(:, :, k, 1) = t(:, :, k, 1) + spec
        t(:, :, k, 2) = t(:, :, k, 2) + spec
        back = spec_to_grid(spec, 1)
        h_applied = h_applied + cp * dhs(k) * back * psg / grav
      end if
    end do

    adj%requested = global_mean(pr_pd) * day_s
    adj%removed = global_mean(pr_eff) * day_s
    adj%limited = global_mean(pr_limited) * day_s
    adj%overflow = global_mean(pr_overflow) * day_s
    adj%water_intended = global_mean(dv)
    adj%water_applied = global_mean(w_applied)
    if (heating) then
      adj%heat_intended = -LATENT_HEAT * adj%water_intended
      adj%heat_applied = global_mean(h_applied)
    end if
  end subroutine column_adjustment

end module speedy_water

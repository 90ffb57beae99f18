!> Grid-point view of SPEEDY's spectral state, as the precipdiff coupling needs it.
!>
!> SPEEDY (speedy.f90, Copyright (c) 2020 Fred Kucharski, Franco Molteni, Sam Hatfield,
!> MIT licence; Molteni 2003, Kucharski et al. 2006, 2013) keeps its prognostic fields as
!> spherical-harmonic coefficients (module prognostics). This module turns one time level
!> of them into the grid-point fields a host model hands to precipdiff -- winds,
!> temperature and specific humidity on the 8 sigma levels with the pressure of every
!> layer, surface and sea-level pressure -- and provides the quadrature that SPEEDY's own
!> spectral transform uses (Gaussian weights), so that global means and the global water
!> budget are computed exactly as the model integrates.
!>
!> Conventions: arrays are (ix, il[, kx]) = (96 longitudes, 48 latitudes[, 8 levels]),
!> latitude index 1 is the southernmost row, level 1 is the top (sigma 0.025) and level kx
!> the lowest (sigma 0.95). Specific humidity is returned in kg kg-1 (SPEEDY: g kg-1).
module speedy_grid
  use types, only: p
  use params, only: ix, il, kx
  implicit none
  private

  public :: grid_init, grid_state_t, get_grid_state, global_mean, column_water
  public :: interp_log_pressure, sea_level_pressure, lon_deg, lat_deg, gauss_w, lat_edges
  public :: LAPSE_RATE

  real(p), parameter :: LAPSE_RATE = 0.0065_p   !< K m-1, standard atmosphere (sea-level pressure)

  real(p), save :: lon_deg(ix)        !< longitudes of the grid, degrees east (0, 3.75, ...)
  real(p), save :: lat_deg(il)        !< latitudes of the grid rows, degrees north (ascending)
  real(p), save :: gauss_w(il)        !< global-mean weight of each row (sum 1): Gaussian weights / 2
  real(p), save :: lat_edges(il + 1)  !< row edges (degrees) whose band areas equal gauss_w

  !> One time level of the model state on the grid.
  type :: grid_state_t
    real(p) :: u(ix, il, kx)       !< eastward wind, m s-1
    real(p) :: v(ix, il, kx)       !< northward wind, m s-1
    real(p) :: t(ix, il, kx)       !< air temperature, K
    real(p) :: q(ix, il, kx)       !< specific humidity, kg kg-1 (may be slightly negative: spectral)
    real(p) :: qpos(ix, il, kx)    !< max(q, 0): the humidity SPEEDY's physics works with
    real(p) :: pfull(ix, il, kx)   !< pressure of each layer (sigma * ps), Pa
    real(p) :: ps(ix, il)          !< surface pressure, Pa
    real(p) :: psl(ix, il)         !< sea-level pressure, Pa
  end type grid_state_t

contains

  !> Coordinates and quadrature weights; call once after SPEEDY's initialize.
  subroutine grid_init()
    use geometry, only: radang
    real(p) :: x(il), w(il)
    integer :: i, j
    do i = 1, ix
      lon_deg(i) = 360.0_p * real(i - 1, p) / real(ix, p)
    end do
    lat_deg = radang * 180.0_p / acos(-1.0_p)
    ! Gauss-Legendre nodes x (ascending, = sin of the exact Gaussian latitudes) and
    ! weights w (sum 2). SPEEDY's direct Legendre transform integrates with these
    ! weights, so global means computed with them equal the (0,0) spectral coefficient.
    call gauss_legendre(il, x, w)
    gauss_w = 0.5_p * w
    lat_edges(1) = -90.0_p
    do j = 1, il
      lat_edges(j + 1) = asin(min(1.0_p, max(-1.0_p, -1.0_p + 2.0_p * sum(gauss_w(1:j))))) &
                         * 180.0_p / acos(-1.0_p)
    end do
    lat_edges(il + 1) = 90.0_p
  end subroutine grid_init

  !> Gauss-Legendre quadrature on [-1, 1] (Newton iteration on P_n), nodes ascending.
  subroutine gauss_legendre(n, x, w)
    integer, intent(in) :: n
    real(p), intent(out) :: x(n), w(n)
    real(p) :: z, z1, p1, p2, p3, pp
    integer :: i, j, it
    do i = 1, (n + 1) / 2
      z = cos(acos(-1.0_p) * (real(i, p) - 0.25_p) / (real(n, p) + 0.5_p))
      do it = 1, 100
        p1 = 1.0_p
        p2 = 0.0_p
        do j = 1, n
          p3 = p2
          p2 = p1
          p1 = ((2.0_p * j - 1.0_p) * z * p2 - (j - 1.0_p) * p3) / j
        end do
        pp = n * (z * p1 - p2) / (z * z - 1.0_p)
        z1 = z
        z = z1 - p1 / pp
        if (abs(z - z1) <= 4.0_p * epsilon(z)) exit
      end do
      x(i) = -z
      x(n + 1 - i) = z
      w(i) = 2.0_p / ((1.0_p - z * z) * pp * pp)
      w(n + 1 - i) = w(i)
    end do
  end subroutine gauss_legendre

  !> Grid-point state of spectral time level `lev` (2: the newest, after a step). With
  !> `all_t = .false.` only the lowest layer's temperature is transformed (what sea-level
  !> pressure needs; the other layers of s%t are left as they were).
  subroutine get_grid_state(lev, s, all_t)
    use prognostics, only: vor, div, t, ps, tr
    use spectral, only: spec_to_grid, uvspec
    use geometry, only: fsg
    use physical_constants, only: p0
    use params, only: mx, nx
    integer, intent(in) :: lev
    type(grid_state_t), intent(inout) :: s
    logical, intent(in) :: all_t
    complex(p) :: ucos(mx, nx), vcos(mx, nx)
    integer :: k
    do k = 1, kx
      call uvspec(vor(:, :, k, lev), div(:, :, k, lev), ucos, vcos)
      s%u(:, :, k) = spec_to_grid(ucos, 2)
      s%v(:, :, k) = spec_to_grid(vcos, 2)
      if (all_t .or. k == kx) s%t(:, :, k) = spec_to_grid(t(:, :, k, lev), 1)
      s%q(:, :, k) = 1.0e-3_p * spec_to_grid(tr(:, :, k, lev, 1), 1)
    end do
    s%qpos = max(s%q, 0.0_p)
    s%ps = p0 * exp(spec_to_grid(ps(:, :, lev), 1))
    do k = 1, kx
      s%pfull(:, :, k) = fsg(k) * s%ps
    end do
    call sea_level_pressure(s%ps, s%t(:, :, kx), fsg(kx), s%psl)
  end subroutine get_grid_state

  !> Sea-level pressure from surface pressure, the lowest layer's temperature and the
  !> model orography: the layer temperature is carried down to the surface and the
  !> column below it to sea level with the standard lapse rate (0.0065 K/m),
  !> psl = ps (1 + gamma z_s / T_s)^(g / (R gamma)).
  subroutine sea_level_pressure(ps, t_low, sigma_low, psl)
    use boundaries, only: phis0
    use physical_constants, only: grav, rgas
    real(p), intent(in) :: ps(ix, il), t_low(ix, il), sigma_low
    real(p), intent(out) :: psl(ix, il)
    real(p) :: expo
    real(p) :: ts(ix, il)
    expo = rgas * LAPSE_RATE / grav
    ts = t_low * sigma_low**(-expo)
    psl = ps * (1.0_p + LAPSE_RATE * (phis0 / grav) / ts)**(1.0_p / expo)
  end subroutine sea_level_pressure

  !> Area-weighted global mean with SPEEDY's quadrature.
  pure function global_mean(f) result(m)
    real(p), intent(in) :: f(ix, il)
    real(p) :: m
    integer :: j
    m = 0.0_p
    do j = 1, il
      m = m + gauss_w(j) * sum(f(:, j))
    end do
    m = m / real(ix, p)
  end function global_mean

  !> Column water vapour, kg m-2: sum over layers of q * dsigma * ps / g.
  pure function column_water(q, ps) result(w)
    use geometry, only: dhs
    use physical_constants, only: grav
    real(p), intent(in) :: q(ix, il, kx)   !< kg kg-1
    real(p), intent(in) :: ps(ix, il)      !< Pa
    real(p) :: w(ix, il)
    integer :: k
    w = 0.0_p
    do k = 1, kx
      w = w + dhs(k) * q(:, :, k)
    end do
    w = w * ps / grav
  end function column_water

  !> Linear interpolation in ln p to one pressure level, the rule precipdiff's plugin
  !> applies to 3-D fields (precipdiff.server.vertical with below_ground = 'constant'):
  !> below the lowest layer the lowest layer's value, above the top the top's value.
  pure function interp_log_pressure(f, pfull, target_pa) result(g)
    real(p), intent(in) :: f(ix, il, kx), pfull(ix, il, kx), target_pa
    real(p) :: g(ix, il)
    real(p) :: w, lt
    integer :: i, j, k
    lt = log(target_pa)
    do j = 1, il
      do i = 1, ix
        if (pfull(i, j, kx) < target_pa) then
          g(i, j) = f(i, j, kx)
        else if (pfull(i, j, 1) >= target_pa) then
          g(i, j) = f(i, j, 1)
        else
          do k = 2, kx
            if (pfull(i, j, k) >= target_pa) exit
          end do
          w = (lt - log(pfull(i, j, k - 1))) / (log(pfull(i, j, k)) - log(pfull(i, j, k - 1)))
          g(i, j) = f(i, j, k - 1) + w * (f(i, j, k) - f(i, j, k - 1))
        end if
      end do
    end do
  end function interp_log_pressure

end module speedy_grid

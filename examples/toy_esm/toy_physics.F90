!> Physics of the toy ESM: a global lat-lon grid, a prescribed time-varying
!> sea-level pressure field with the 10 m winds that go with it, an evaporation
!> source and mass-conserving upwind advection of column water vapour.
!>
!> The model is deliberately small but behaves like a real grid-point model
!> where the precipitation parameterization is concerned: it hands the plugin
!> u10, v10 and msl every timestep, and it takes the plugin's daily
!> precipitation back as the sink of its moisture.
!>
!> Conventions: fields are real(8) arrays (nlon, nlat), longitude fastest,
!> latitude ascending (south to north), cell-centred, SI units.
module toy_physics
  implicit none
  private

  integer, parameter, public :: dp = kind(1.0d0)

  real(dp), parameter, public :: pi = 3.14159265358979323846_dp
  real(dp), parameter, public :: earth_radius = 6.371e6_dp   !< m
  real(dp), parameter, public :: omega_earth = 7.292e-5_dp   !< rad s-1
  real(dp), parameter, public :: rho_air = 1.2_dp            !< kg m-3, near-surface
  real(dp), parameter, public :: seconds_per_day = 86400.0_dp
  real(dp), parameter :: deg2rad = pi / 180.0_dp

  !> A regular, global, cell-centred latitude-longitude grid.
  type, public :: toy_grid_t
    integer :: nlon = 0                          !! number of longitudes
    integer :: nlat = 0                          !! number of latitudes
    real(dp) :: dlon = 0.0_dp                    !! longitude spacing (rad)
    real(dp) :: dlat = 0.0_dp                    !! latitude spacing (rad)
    real(dp), allocatable :: lon_deg(:)          !! cell-centre longitudes (degrees east)
    real(dp), allocatable :: lat_deg(:)          !! cell-centre latitudes (degrees north)
    real(dp), allocatable :: lon_bnds_deg(:, :)  !! (2, nlon) cell edges in longitude
    real(dp), allocatable :: lat_bnds_deg(:, :)  !! (2, nlat) cell edges in latitude
    real(dp), allocatable :: area(:)             !! (nlat) cell area (m2), same for every longitude
    real(dp), allocatable :: cos_edge(:)         !! (0:nlat) cosine of latitude at the southern/northern edges
  end type toy_grid_t

  !> Parameters of the prescribed atmosphere and of evaporation.
  type, public :: toy_params_t
    real(dp) :: wave_amplitude_pa = 1200.0_dp   !! amplitude of the travelling mid-latitude lows/highs (Pa)
    integer  :: wave_number = 5                 !! zonal wave number of the travelling systems
    real(dp) :: wave_speed = 8.0_dp             !! eastward phase speed at 50 degrees latitude (m s-1)
    real(dp) :: friction_angle_deg = 20.0_dp    !! cross-isobar angle of the 10 m wind (degrees)
    real(dp) :: friction_factor = 0.7_dp        !! 10 m wind / geostrophic wind
    real(dp) :: max_wind = 30.0_dp              !! cap on the 10 m wind speed (m s-1)
    real(dp) :: evap_timescale_days = 5.0_dp    !! relaxation time of evaporation towards saturation (days)
    real(dp) :: wind_ref = 10.0_dp              !! wind speed that doubles evaporation (m s-1)
  end type toy_params_t

  public :: grid_init, band_mean_part, prescribed_atmosphere, saturation_water
  public :: evaporation, advect_step, courant_max

contains

  !> Build a global cell-centred grid of nlon x nlat cells.
  subroutine grid_init(grid, nlon, nlat, errmsg, errflg)
    type(toy_grid_t), intent(out) :: grid  !! the grid
    integer, intent(in) :: nlon            !! number of longitudes (>= 4)
    integer, intent(in) :: nlat            !! number of latitudes (>= 4)
    character(len=*), intent(out) :: errmsg  !! error message
    integer, intent(out) :: errflg           !! error flag (0: success)
    integer :: i, j
    real(dp) :: dlon_deg, dlat_deg, s_lo, s_hi

    errmsg = ''
    errflg = 0
    if (nlon < 4 .or. nlat < 4) then
      write (errmsg, '(a,i0,a,i0,a)') 'toy_esm: grid nlon=', nlon, ', nlat=', nlat, &
        ' is too small (need >= 4 each)'
      errflg = 1
      return
    end if
    grid%nlon = nlon
    grid%nlat = nlat
    dlon_deg = 360.0_dp / nlon
    dlat_deg = 180.0_dp / nlat
    grid%dlon = dlon_deg * deg2rad
    grid%dlat = dlat_deg * deg2rad
    allocate (grid%lon_deg(nlon), grid%lat_deg(nlat), grid%lon_bnds_deg(2, nlon), &
              grid%lat_bnds_deg(2, nlat), grid%area(nlat), grid%cos_edge(0:nlat))
    do i = 1, nlon
      grid%lon_bnds_deg(1, i) = (i - 1) * dlon_deg
      grid%lon_bnds_deg(2, i) = i * dlon_deg
      grid%lon_deg(i) = (i - 0.5_dp) * dlon_deg
    end do
    do j = 1, nlat
      grid%lat_bnds_deg(1, j) = -90.0_dp + (j - 1) * dlat_deg
      grid%lat_bnds_deg(2, j) = -90.0_dp + j * dlat_deg
      grid%lat_deg(j) = -90.0_dp + (j - 0.5_dp) * dlat_deg
      s_lo = sin(grid%lat_bnds_deg(1, j) * deg2rad)
      s_hi = sin(grid%lat_bnds_deg(2, j) * deg2rad)
      grid%area(j) = earth_radius**2 * grid%dlon * (s_hi - s_lo)
    end do
    do j = 0, nlat
      grid%cos_edge(j) = cos((-90.0_dp + j * dlat_deg) * deg2rad)
    end do
    ! The poles are points: no meridional flux crosses them.
    grid%cos_edge(0) = 0.0_dp
    grid%cos_edge(nlat) = 0.0_dp
  end subroutine grid_init

  !> Area-weighted sum of a field over the rows j_first .. j_first + size(field, 2) - 1,
  !> divided by the area of the whole globe: summed over all bands (MPI_Allreduce in
  !> a decomposed run) it is the global mean.
  pure function band_mean_part(grid, field, j_first) result(part)
    type(toy_grid_t), intent(in) :: grid   !! the grid
    real(dp), intent(in) :: field(:, :)    !! (nlon, rows) field
    integer, intent(in) :: j_first         !! global latitude index of the first row
    real(dp) :: part                       !! this band's share of the global mean
    integer :: jl
    part = 0.0_dp
    do jl = 1, size(field, 2)
      part = part + grid%area(j_first + jl - 1) * sum(field(:, jl))
    end do
    part = part / (grid%nlon * sum(grid%area))
  end function band_mean_part

  !> Zonal-mean sea-level pressure (Pa) and its latitude derivative (Pa per degree).
  !> Equatorial trough, subtropical highs, subpolar lows and polar highs, as in
  !> the observed climatology.
  pure subroutine zonal_pressure(lat, p, dp_dlat)
    real(dp), intent(in) :: lat       !! latitude (degrees)
    real(dp), intent(out) :: p        !! pressure (Pa)
    real(dp), intent(out) :: dp_dlat  !! derivative (Pa per degree)
    integer, parameter :: ncomp = 7
    real(dp), parameter :: amp(ncomp) = [-400.0_dp, 900.0_dp, 900.0_dp, -1800.0_dp, &
                                         -1800.0_dp, 600.0_dp, 600.0_dp]
    real(dp), parameter :: centre(ncomp) = [0.0_dp, 30.0_dp, -30.0_dp, 62.0_dp, -62.0_dp, &
                                            90.0_dp, -90.0_dp]
    real(dp), parameter :: width(ncomp) = [8.0_dp, 10.0_dp, 10.0_dp, 10.0_dp, 10.0_dp, &
                                           10.0_dp, 10.0_dp]
    integer :: k
    real(dp) :: g
    p = 101200.0_dp
    dp_dlat = 0.0_dp
    do k = 1, ncomp
      g = amp(k) * exp(-((lat - centre(k)) / width(k))**2)
      p = p + g
      dp_dlat = dp_dlat - 2.0_dp * (lat - centre(k)) / width(k)**2 * g
    end do
  end subroutine zonal_pressure

  !> Prescribed atmosphere at time t: sea-level pressure and the 10 m wind that
  !> goes with it (geostrophic wind turned towards low pressure by surface
  !> friction and reduced in speed). Travelling lows and highs move eastwards
  !> through the mid-latitudes of both hemispheres, so every point sees weather.
  !> Winds are tapered towards the poles (like the polar filters of grid-point
  !> models) so the explicit advection stays stable with a 30 min timestep.
  !> Computed for the latitude rows j_first .. j_first + size(msl, 2) - 1 of the
  !> grid (a band of a decomposed model, possibly with halo rows); rows outside
  !> 1..nlat (halos beyond a pole) get zero.
  subroutine prescribed_atmosphere(grid, params, time_s, msl, u10, v10, j_first)
    type(toy_grid_t), intent(in) :: grid      !! the grid
    type(toy_params_t), intent(in) :: params  !! atmosphere parameters
    real(dp), intent(in) :: time_s            !! model time (s)
    real(dp), intent(out) :: msl(:, :)        !! sea-level pressure (Pa), (nlon, rows)
    real(dp), intent(out) :: u10(:, :)        !! eastward 10 m wind (m s-1), (nlon, rows)
    real(dp), intent(out) :: v10(:, :)        !! northward 10 m wind (m s-1), (nlon, rows)
    integer, intent(in) :: j_first            !! global latitude index of the first row
    integer :: i, j, jl
    real(dp) :: lat, phi, pz, dpz, amp_w, damp_w, phase_speed, phase, f, coslat
    real(dp) :: dpdphi, dpdlam, ug, vg, s, srot, ca, sa, taper, speed, p_w
    real(dp), parameter :: wave_lat = 50.0_dp, wave_width = 14.0_dp
    real(dp), parameter :: f_min_lat = 12.0_dp, taper_lat = 75.0_dp

    ! Angular phase speed of the travelling systems (rad s-1).
    phase_speed = params%wave_speed / (earth_radius * cos(wave_lat * deg2rad))
    ca = cos(params%friction_angle_deg * deg2rad)
    sa = sin(params%friction_angle_deg * deg2rad)
    do jl = 1, size(msl, 2)
      j = j_first + jl - 1
      if (j < 1 .or. j > grid%nlat) then
        msl(:, jl) = 0.0_dp
        u10(:, jl) = 0.0_dp
        v10(:, jl) = 0.0_dp
        cycle
      end if
      lat = grid%lat_deg(j)
      phi = lat * deg2rad
      coslat = cos(phi)
      call zonal_pressure(lat, pz, dpz)
      ! Wave envelope centred on +-50 degrees; its derivative in Pa per degree.
      amp_w = params%wave_amplitude_pa * (exp(-((lat - wave_lat) / wave_width)**2) + &
                                          exp(-((lat + wave_lat) / wave_width)**2))
      damp_w = params%wave_amplitude_pa * &
               (-2.0_dp * (lat - wave_lat) / wave_width**2 * exp(-((lat - wave_lat) / wave_width)**2) &
                - 2.0_dp * (lat + wave_lat) / wave_width**2 * exp(-((lat + wave_lat) / wave_width)**2))
      ! Coriolis parameter, kept away from zero near the equator (the wind there
      ! is then a smooth continuation of the trade winds).
      s = sign(1.0_dp, lat)
      f = 2.0_dp * omega_earth * s * max(abs(sin(phi)), sin(f_min_lat * deg2rad))
      taper = min(1.0_dp, coslat / cos(taper_lat * deg2rad))
      srot = tanh(lat / 10.0_dp)
      do i = 1, grid%nlon
        phase = params%wave_number * (grid%lon_deg(i) * deg2rad - phase_speed * time_s)
        p_w = amp_w * cos(phase)
        msl(i, jl) = pz + p_w
        dpdphi = (dpz + damp_w * cos(phase)) / deg2rad       ! Pa per radian
        dpdlam = -params%wave_number * amp_w * sin(phase)     ! Pa per radian
        ug = -dpdphi / (rho_air * f * earth_radius)
        vg = dpdlam / (rho_air * f * earth_radius * max(coslat, 1.0e-6_dp))
        ! Friction turns the wind towards low pressure: anticlockwise in the
        ! northern hemisphere, clockwise in the southern; the turning fades out
        ! over +-10 degrees around the equator so the trade winds converge over a
        ! broad ITCZ rather than into one row of cells.
        u10(i, jl) = params%friction_factor * taper * (ug * ca - srot * vg * sa)
        v10(i, jl) = params%friction_factor * taper * (srot * ug * sa + vg * ca)
        speed = sqrt(u10(i, jl)**2 + v10(i, jl)**2)
        if (speed > params%max_wind) then
          u10(i, jl) = u10(i, jl) * params%max_wind / speed
          v10(i, jl) = v10(i, jl) * params%max_wind / speed
        end if
      end do
    end do
  end subroutine prescribed_atmosphere

  !> Saturated column water vapour (kg m-2) over an SST-like latitude profile:
  !> SST = 29 cos^2(lat) - 1 degC (not below -1.8 degC), Clausius-Clapeyron-like
  !> growth of 6.5 % per kelvin, 55 kg m-2 at the warmest SST.
  pure function saturation_water(lat_deg) result(wsat)
    real(dp), intent(in) :: lat_deg   !! latitude (degrees)
    real(dp) :: wsat                  !! saturated column water vapour (kg m-2)
    real(dp) :: sst
    sst = max(-1.8_dp, 29.0_dp * cos(lat_deg * deg2rad)**2 - 1.0_dp)
    wsat = 55.0_dp * exp(0.065_dp * (sst - 28.0_dp))
  end function saturation_water

  !> Evaporation (kg m-2 s-1): relaxation of the column towards saturation over
  !> the SST-like profile, faster in stronger wind (bulk-formula-like). Never negative.
  !> For the rows j_first .. j_first + size(evap, 2) - 1.
  subroutine evaporation(grid, params, water, u10, v10, evap, j_first)
    type(toy_grid_t), intent(in) :: grid      !! the grid
    type(toy_params_t), intent(in) :: params  !! parameters
    real(dp), intent(in) :: water(:, :)       !! column water vapour (kg m-2)
    real(dp), intent(in) :: u10(:, :)         !! eastward 10 m wind (m s-1)
    real(dp), intent(in) :: v10(:, :)         !! northward 10 m wind (m s-1)
    real(dp), intent(out) :: evap(:, :)       !! evaporation (kg m-2 s-1)
    integer, intent(in) :: j_first            !! global latitude index of the first row
    integer :: i, jl
    real(dp) :: wsat, tau, wind
    tau = params%evap_timescale_days * seconds_per_day
    do jl = 1, size(evap, 2)
      wsat = saturation_water(grid%lat_deg(j_first + jl - 1))
      do i = 1, grid%nlon
        wind = sqrt(u10(i, jl)**2 + v10(i, jl)**2)
        evap(i, jl) = max(0.0_dp, wsat - water(i, jl)) / tau * (1.0_dp + wind / params%wind_ref)
      end do
    end do
  end subroutine evaporation

  !> Largest Courant number of the winds with timestep dt (outgoing-flux sum per
  !> cell) over the band's rows 1..nb; u10, v10 carry halo rows 0 and nb+1.
  pure function courant_max(grid, u10, v10, dt, j_first) result(cmax)
    type(toy_grid_t), intent(in) :: grid   !! the grid
    real(dp), intent(in) :: u10(:, 0:)     !! eastward wind (m s-1), (nlon, 0:nb+1)
    real(dp), intent(in) :: v10(:, 0:)     !! northward wind (m s-1), (nlon, 0:nb+1)
    real(dp), intent(in) :: dt             !! timestep (s)
    integer, intent(in) :: j_first         !! global latitude index of row 1
    real(dp) :: cmax                       !! max over cells of outflow volume / cell volume
    real(dp), allocatable :: uf(:, :), vf(:, :)
    integer :: i, jl, j, ip, nb
    real(dp) :: out
    call face_winds(grid, u10, v10, j_first, uf, vf)
    nb = size(u10, 2) - 2
    cmax = 0.0_dp
    do jl = 1, nb
      j = j_first + jl - 1
      do i = 1, grid%nlon
        ip = i - 1
        if (ip < 1) ip = grid%nlon
        ! Outgoing transports through the four faces of cell (i, j).
        out = max(0.0_dp, uf(i, jl)) + max(0.0_dp, -uf(ip, jl))
        out = out * earth_radius * grid%dlat
        out = out + (max(0.0_dp, vf(i, jl)) * grid%cos_edge(j) &
                     + max(0.0_dp, -vf(i, jl - 1)) * grid%cos_edge(j - 1)) * earth_radius * grid%dlon
        cmax = max(cmax, out * dt / grid%area(j))
      end do
    end do
  end function courant_max

  !> Winds on cell faces of the band: uf(i, jl) on the east face of cell (i, jl)
  !> (periodic), vf(i, jl) on the north face of row jl for jl = 0..nb (face 0 is
  !> the band's southern edge). The flux through a pole face is removed by
  !> cos_edge = 0 there.
  pure subroutine face_winds(grid, u10, v10, j_first, uf, vf)
    type(toy_grid_t), intent(in) :: grid
    real(dp), intent(in) :: u10(:, 0:), v10(:, 0:)
    integer, intent(in) :: j_first
    real(dp), allocatable, intent(out) :: uf(:, :), vf(:, :)
    integer :: i, jl, ie, nb
    nb = size(u10, 2) - 2
    allocate (uf(grid%nlon, nb), vf(grid%nlon, 0:nb))
    do jl = 1, nb
      do i = 1, grid%nlon
        ie = i + 1
        if (ie > grid%nlon) ie = 1
        uf(i, jl) = 0.5_dp * (u10(i, jl) + u10(ie, jl))
      end do
    end do
    do jl = 0, nb
      if (j_first + jl - 1 <= 0 .or. j_first + jl - 1 >= grid%nlat) then
        vf(:, jl) = 0.0_dp
      else
        vf(:, jl) = 0.5_dp * (v10(:, jl) + v10(:, jl + 1))
      end if
    end do
  end subroutine face_winds

  !> One upwind finite-volume step of length h for the band's rows 1..nb, in
  !> flux form: fluxes through shared faces are computed identically by both
  !> neighbours, so the global integral is conserved to round-off and the field
  !> stays non-negative while the Courant number is below one. water carries
  !> halo rows 0 and nb+1 (filled by the caller: a neighbour's rows, or anything
  !> finite beyond a pole).
  subroutine advect_step(grid, water, u10, v10, h, j_first)
    type(toy_grid_t), intent(in) :: grid     !! the grid
    real(dp), intent(inout) :: water(:, 0:)  !! column water vapour (kg m-2), (nlon, 0:nb+1)
    real(dp), intent(in) :: u10(:, 0:)       !! eastward wind (m s-1), (nlon, 0:nb+1)
    real(dp), intent(in) :: v10(:, 0:)       !! northward wind (m s-1), (nlon, 0:nb+1)
    real(dp), intent(in) :: h                !! step length (s)
    integer, intent(in) :: j_first           !! global latitude index of row 1
    real(dp), allocatable :: uf(:, :), vf(:, :), fx(:, :), fy(:, :)
    real(dp) :: ex, ey
    integer :: i, jl, j, ie, iw, nb

    nb = size(water, 2) - 2
    call face_winds(grid, u10, v10, j_first, uf, vf)
    allocate (fx(grid%nlon, nb), fy(grid%nlon, 0:nb))
    ex = earth_radius * grid%dlat
    ey = earth_radius * grid%dlon
    ! Mass fluxes (kg s-1) through east faces and north faces.
    do jl = 1, nb
      do i = 1, grid%nlon
        ie = i + 1
        if (ie > grid%nlon) ie = 1
        if (uf(i, jl) >= 0.0_dp) then
          fx(i, jl) = uf(i, jl) * water(i, jl) * ex
        else
          fx(i, jl) = uf(i, jl) * water(ie, jl) * ex
        end if
      end do
    end do
    do jl = 0, nb
      j = j_first + jl - 1       ! global index of the face (north edge of row j)
      do i = 1, grid%nlon
        if (vf(i, jl) >= 0.0_dp) then
          fy(i, jl) = vf(i, jl) * water(i, jl) * ey * grid%cos_edge(j)
        else
          fy(i, jl) = vf(i, jl) * water(i, jl + 1) * ey * grid%cos_edge(j)
        end if
      end do
    end do
    do jl = 1, nb
      j = j_first + jl - 1
      do i = 1, grid%nlon
        iw = i - 1
        if (iw < 1) iw = grid%nlon
        water(i, jl) = water(i, jl) - h / grid%area(j) * &
                       (fx(i, jl) - fx(iw, jl) + fy(i, jl) - fy(i, jl - 1))
      end do
    end do
  end subroutine advect_step

end module toy_physics

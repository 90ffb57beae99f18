!> speedy_interp_check: writes the driver's ln-p interpolation (speedy_grid) of synthetic
!> SPEEDY columns to a netCDF file, so that ctest speedy_vertical_interp can compare it with
!> precipdiff's own rule (precipdiff.server.vertical.interp_log_pressure, which the plugin
!> applies to the 3-D fields the driver hands it). The perfect-model training data
!> (hus850, ua850, va850 in the driver's output) are made with the Fortran rule, the plugin
!> sees the Python rule: they must agree to round-off.
!>
!> Usage: speedy_interp_check OUT.nc
program speedy_interp_check
  use netcdf
  use types, only: p
  use params, only: ix, il, kx
  use geometry, only: initialize_geometry, fsg
  use speedy_grid, only: interp_log_pressure
  implicit none
  real(p), allocatable :: f(:, :, :), pf(:, :, :), ps(:, :), g(:, :)
  real(p) :: r
  integer :: i, j, k, ncid, dx, dy, dz, vf, vp, vg, ierr
  character(len=512) :: path
  real(p), parameter :: target_pa = 85000.0_p

  call get_command_argument(1, path)
  if (len_trim(path) == 0) path = 'speedy_interp_check.nc'
  call initialize_geometry()
  allocate (f(ix, il, kx), pf(ix, il, kx), ps(ix, il), g(ix, il))
  ! Deterministic pseudo-random columns: surface pressure 50-105 kPa (so 850 hPa is below
  ! ground in part of them), values varying in every layer.
  r = 0.1234_p
  do j = 1, il
    do i = 1, ix
      r = mod(r * 9301.0_p + 0.49297_p, 1.0_p)
      ps(i, j) = 50000.0_p + 55000.0_p * r
      do k = 1, kx
        r = mod(r * 9301.0_p + 0.49297_p, 1.0_p)
        f(i, j, k) = 0.001_p * k + 0.01_p * r
        pf(i, j, k) = fsg(k) * ps(i, j)
      end do
    end do
  end do
  g = interp_log_pressure(f, pf, target_pa)

  ierr = nf90_create(trim(path), NF90_CLOBBER, ncid)
  ierr = ior(ierr, nf90_def_dim(ncid, 'lon', ix, dx))
  ierr = ior(ierr, nf90_def_dim(ncid, 'lat', il, dy))
  ierr = ior(ierr, nf90_def_dim(ncid, 'lev', kx, dz))
  ierr = ior(ierr, nf90_def_var(ncid, 'field', NF90_DOUBLE, [dx, dy, dz], vf))
  ierr = ior(ierr, nf90_def_var(ncid, 'pressure', NF90_DOUBLE, [dx, dy, dz], vp))
  ierr = ior(ierr, nf90_def_var(ncid, 'at_850hpa', NF90_DOUBLE, [dx, dy], vg))
  ierr = ior(ierr, nf90_enddef(ncid))
  ierr = ior(ierr, nf90_put_var(ncid, vf, f))
  ierr = ior(ierr, nf90_put_var(ncid, vp, pf))
  ierr = ior(ierr, nf90_put_var(ncid, vg, g))
  ierr = ior(ierr, nf90_close(ncid))
  if (ierr /= NF90_NOERR) then
    write (*, '(a)') 'speedy_interp_check: error writing ' // trim(path)
    error stop 1
  end if
  write (*, '(a)') 'speedy_interp_check: wrote ' // trim(path)
end program speedy_interp_check

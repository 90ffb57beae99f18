!> Small assertion helpers for the bridge's Fortran tests (no test framework needed).
module pd_test_utils
  implicit none
  private
  public :: check, expect_error, expect_ok, finish, nfail

  integer :: nfail = 0 !! number of failed checks so far

contains

  !> Record a failed check (and print it) when cond is false.
  subroutine check(cond, what)
    logical, intent(in) :: cond          !! condition that must hold
    character(len=*), intent(in) :: what !! description printed on failure
    if (.not. cond) then
      nfail = nfail + 1
      write (*, '(a,a)') 'FAIL: ', what
    else
      write (*, '(a,a)') 'ok:   ', what
    end if
  end subroutine check

  !> The call must have succeeded.
  subroutine expect_ok(errflg, errmsg, what)
    integer, intent(in) :: errflg           !! returned flag
    character(len=*), intent(in) :: errmsg  !! returned message
    character(len=*), intent(in) :: what    !! description
    if (errflg /= 0) write (*, '(a,i0,a,a)') '      errflg=', errflg, ' errmsg=', trim(errmsg)
    call check(errflg == 0 .and. len_trim(errmsg) == 0, what)
  end subroutine expect_ok

  !> The call must have failed with code and a message containing every needle.
  subroutine expect_error(errflg, errmsg, code, needles, what)
    integer, intent(in) :: errflg             !! returned flag
    character(len=*), intent(in) :: errmsg    !! returned message
    integer, intent(in) :: code               !! expected pd_status code
    character(len=*), intent(in) :: needles(:) !! substrings the message must contain
    character(len=*), intent(in) :: what      !! description
    logical :: good
    integer :: i
    good = errflg == code
    do i = 1, size(needles)
      good = good .and. index(errmsg, trim(needles(i))) > 0
    end do
    write (*, '(a,i0,a,a)') '      errflg=', errflg, ' errmsg=', trim(errmsg)
    call check(good, what)
  end subroutine expect_error

  !> Print a summary; the caller exits non-zero via error stop only in tests.
  subroutine finish()
    if (nfail > 0) then
      write (*, '(i0,a)') nfail, ' check(s) failed'
      error stop 1
    end if
    write (*, '(a)') 'all checks passed'
  end subroutine finish
end module pd_test_utils

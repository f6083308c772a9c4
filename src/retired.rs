//! Entry points that an older schema still declares. 0.1.0's internal functions (`auth._*`)
//! name these symbols; 0.2.0 has no such functions, since its API functions are the entry points
//! themselves. A library must export every symbol of the versions it can be installed as and
//! updated from, and until `ALTER EXTENSION pg_otp_auth UPDATE` runs these answer, through
//! 0.1.0's `auth._unwrap`, that the schema needs the update.

use pgrx::pg_sys;

macro_rules! retired {
    ($($symbol:ident, $finfo:ident;)*) => {
        $(
            #[unsafe(no_mangle)]
            #[doc(hidden)]
            pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
                const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
                &V1
            }

            #[unsafe(no_mangle)]
            #[doc(hidden)]
            pub unsafe extern "C-unwind" fn $symbol(_: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
                unsafe {
                    pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
                        use pgrx::datum::IntoDatum;
                        crate::respond::<()>(Err(crate::config::update_required()))
                            .into_datum()
                            .expect("jsonb_in answers a value")
                    })
                }
            }
        )*
    };
}

retired! {
    send_sms_otp_impl_wrapper, pg_finfo_send_sms_otp_impl_wrapper;
    resend_sms_otp_impl_wrapper, pg_finfo_resend_sms_otp_impl_wrapper;
    verify_sms_otp_impl_wrapper, pg_finfo_verify_sms_otp_impl_wrapper;
    refresh_session_impl_wrapper, pg_finfo_refresh_session_impl_wrapper;
    mfa_enroll_impl_wrapper, pg_finfo_mfa_enroll_impl_wrapper;
    mfa_challenge_impl_wrapper, pg_finfo_mfa_challenge_impl_wrapper;
    mfa_verify_impl_wrapper, pg_finfo_mfa_verify_impl_wrapper;
    mfa_challenge_and_verify_impl_wrapper, pg_finfo_mfa_challenge_and_verify_impl_wrapper;
    mfa_unenroll_impl_wrapper, pg_finfo_mfa_unenroll_impl_wrapper;
    mfa_list_factors_impl_wrapper, pg_finfo_mfa_list_factors_impl_wrapper;
    mfa_aal_impl_wrapper, pg_finfo_mfa_aal_impl_wrapper;
    signin_mfa_totp_impl_wrapper, pg_finfo_signin_mfa_totp_impl_wrapper;
    signin_mfa_recovery_code_impl_wrapper, pg_finfo_signin_mfa_recovery_code_impl_wrapper;
    set_setting_impl_wrapper, pg_finfo_set_setting_impl_wrapper;
    reset_setting_impl_wrapper, pg_finfo_reset_setting_impl_wrapper;
}

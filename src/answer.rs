//! What the API functions answer: jsonb, or an error PostgREST maps to an HTTP status.

use pg_otp_auth_core::error::AuthError;

/// A jsonb result, built straight from Rust values (see `jsonb`): unlike pgrx's `JsonB`, it
/// needs no `serde_json::Value` (a tree of maps built only to be printed) and no JSON text for
/// `jsonb_in` to parse again.
pub(crate) struct Answer(pgrx::pg_sys::Datum);

impl pgrx::datum::IntoDatum for Answer {
    fn into_datum(self) -> Option<pgrx::pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pgrx::pg_sys::Oid {
        pgrx::pg_sys::JSONBOID
    }
}

pgrx::impl_sql_translatable!(Answer, "jsonb");

unsafe impl pgrx::callconv::BoxRet for Answer {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// `v` as jsonb; a value that cannot be written is an internal error.
fn jsonb_of<T: serde::Serialize + ?Sized>(
    v: &T,
) -> pg_otp_auth_core::error::Result<pgrx::pg_sys::Datum> {
    crate::jsonb::to_jsonb(v).map_err(|e| AuthError::internal(format!("Unprintable answer: {e}")))
}

/// The tagged result the SQL wrappers unwrap (and raise from).
pub(crate) fn respond<T: serde::Serialize>(result: pg_otp_auth_core::error::Result<T>) -> Answer {
    #[derive(serde::Serialize)]
    struct Tagged<'a, T> {
        ok: &'a T,
    }
    let tagged = |e: AuthError| jsonb_of(&e.to_result_json()).expect("an error is written");
    Answer(match result.and_then(|v| jsonb_of(&Tagged { ok: &v })) {
        Ok(datum) => datum,
        Err(e) => tagged(e),
    })
}

/// What an API function's call came to: its answer, or the error it raises. Plain data (a
/// datum and raw pointers), so nothing is left to drop when the error is raised.
pub(crate) enum Outcome {
    Answered(pgrx::pg_sys::Datum),
    Refused {
        sqlstate: i32,
        message: *mut std::ffi::c_char,
        detail: *mut std::ffi::c_char,
        hint: *mut std::ffi::c_char,
    },
}

/// `PT` followed by the three digits of an HTTP status, as a SQLSTATE (PostgREST answers
/// `PTxyz` with HTTP status xyz): PostgreSQL's MAKE_SQLSTATE, six bits per character.
fn sqlstate_of(status: u16) -> i32 {
    let status = status.min(999);
    let digits = [status / 100, status / 10 % 10, status % 10].map(|d| b'0' + d as u8);
    [b'P', b'T', digits[0], digits[1], digits[2]]
        .iter()
        .enumerate()
        .map(|(i, c)| (((c - b'0') & 0x3F) as i32) << (6 * i))
        .sum()
}

/// A copy of `s` in the current memory context, which error recovery frees.
fn palloc_text(s: &str) -> *mut std::ffi::c_char {
    let s = std::ffi::CString::new(s.replace('\0', " ")).expect("NUL characters were replaced");
    unsafe { pgrx::pg_sys::pstrdup(s.as_ptr()) }
}

/// The outcome of an API function's result: the answer as jsonb, or the error's parts.
pub(crate) fn outcome<T: serde::Serialize>(result: pg_otp_auth_core::error::Result<T>) -> Outcome {
    match result.and_then(|v| jsonb_of(&v)) {
        Ok(datum) => Outcome::Answered(datum),
        Err(e) => Outcome::Refused {
            sqlstate: sqlstate_of(e.status),
            message: palloc_text(&e.message),
            detail: palloc_text(e.code),
            hint: e.hint.as_deref().map_or(std::ptr::null_mut(), palloc_text),
        },
    }
}

/// Ends an API function's call: answers its datum, or raises its error with the SQLSTATE,
/// message, DETAIL (the stable code) and HINT of the `AuthError`. Called outside pgrx's guard,
/// with nothing left to drop: `errfinish` jumps out of this frame.
///
/// # Safety
/// Only as the last step of a V1 function's entry point.
pub(crate) unsafe fn deliver(outcome: Outcome) -> pgrx::pg_sys::Datum {
    use std::ffi::{c_char, c_int};
    unsafe extern "C-unwind" {
        fn errstart(elevel: c_int, domain: *const c_char) -> bool;
        fn errcode(sqlerrcode: c_int) -> c_int;
        fn errmsg(fmt: *const c_char, ...) -> c_int;
        fn errdetail(fmt: *const c_char, ...) -> c_int;
        fn errhint(fmt: *const c_char, ...) -> c_int;
        fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    }
    match outcome {
        Outcome::Answered(datum) => datum,
        Outcome::Refused {
            sqlstate,
            message,
            detail,
            hint,
        } => unsafe {
            if errstart(pgrx::PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(sqlstate);
                errmsg(c"%s".as_ptr(), message);
                errdetail(c"%s".as_ptr(), detail);
                if !hint.is_null() {
                    errhint(c"%s".as_ptr(), hint);
                }
                errfinish(c"answer.rs".as_ptr(), line!() as c_int, c"deliver".as_ptr());
            }
            unreachable!("an ERROR does not return")
        },
    }
}

/// Declares an API function's V1 entry point `$symbol` (with its record `pg_finfo_$symbol`),
/// which the SQL declares `LANGUAGE c` under its public name: the arguments are read by
/// position as `Option`s of the given types, `$body` runs under pgrx's guard (a panic or a
/// PostgreSQL error inside becomes an ERROR as usual), and its `Result` is answered as jsonb or
/// raised.
macro_rules! api_function {
    ($symbol:ident, ($($arg:ident: Option<$ty:ty>),* $(,)?) => $body:expr) => {
        const _: () = {
            #[unsafe(export_name = concat!("pg_finfo_", stringify!($symbol)))]
            extern "C" fn finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
                const V1: ::pgrx::pg_sys::Pg_finfo_record =
                    ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
                &V1
            }
        };

        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub unsafe extern "C-unwind" fn $symbol(
            fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            let outcome = unsafe {
                ::pgrx::pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
                    let _ = fcinfo;
                    let mut _position = 0usize;
                    $(
                        let $arg: Option<$ty> = ::pgrx::fcinfo::pg_getarg::<$ty>(fcinfo, _position);
                        _position += 1;
                    )*
                    $crate::answer::outcome($body)
                })
            };
            unsafe { $crate::answer::deliver(outcome) }
        }
    };
}
pub(crate) use api_function;

//! What the internal `auth._*` functions answer: `{"ok": …}` or `{"error": …}`, as jsonb.

/// A jsonb result, written straight from Rust values as JSON text and read by `jsonb_in`:
/// unlike pgrx's `JsonB`, it needs no `serde_json::Value` (a tree of maps built only to be
/// printed), and raw JSON read from a statement (`RawValue`) passes through as it is.
pub(crate) struct Answer(String);

impl pgrx::datum::IntoDatum for Answer {
    fn into_datum(self) -> Option<pgrx::pg_sys::Datum> {
        let text = std::ffi::CString::new(self.0)
            .expect("serde_json escapes NUL characters, so JSON text has none");
        unsafe {
            pgrx::direct_function_call_as_datum(
                pgrx::pg_sys::jsonb_in,
                &[Some(text.as_ptr().into())],
            )
        }
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
        use pgrx::datum::IntoDatum;
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

/// The tagged result the SQL wrappers unwrap (and raise from).
pub(crate) fn respond<T: serde::Serialize>(result: pg_otp_auth_core::error::Result<T>) -> Answer {
    #[derive(serde::Serialize)]
    struct Tagged<'a, T> {
        ok: &'a T,
    }
    let text = match &result {
        Ok(v) => serde_json::to_string(&Tagged { ok: v }),
        Err(e) => serde_json::to_string(&e.to_result_json()),
    };
    Answer(text.unwrap_or_else(|e| {
        serde_json::to_string(
            &pg_otp_auth_core::error::AuthError::internal(format!("Unprintable answer: {e}"))
                .to_result_json(),
        )
        .expect("an error prints")
    }))
}

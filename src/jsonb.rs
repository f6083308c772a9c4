//! Answers built as jsonb directly from Rust values: a serde `Serializer` that feeds
//! PostgreSQL's `pushJsonbValue`, the way `jsonb_build_object` builds its result. Printing the
//! answer as JSON text for `jsonb_in` to parse again cost more than the rest of the answer: the
//! access token alone is a thousand characters, which PostgreSQL's JSON lexer copies one at a
//! time.
//!
//! The value is the one `jsonb_in` would read from `serde_json`'s text of the same Rust value:
//! numbers are the same numerics (integers exactly, floats from the same shortest text),
//! non-finite floats are null, later duplicate keys win. Raw JSON (`RawValue`, such as the user
//! object a statement printed) is walked with serde_json, and each of its numbers read from its
//! own text, so they stay exact.

use pgrx::pg_sys;
use serde::ser::{self, Serialize};
use serde_json::value::RawValue;
use std::fmt::Display;

/// `v` as a jsonb datum, in the current memory context.
pub(crate) fn to_jsonb<T: Serialize + ?Sized>(v: &T) -> Result<pg_sys::Datum, Error> {
    let mut builder = Builder {
        state: std::ptr::null_mut(),
        stack: Vec::new(),
        root: None,
    };
    v.serialize(&mut builder)?;
    let root = builder
        .root
        .ok_or_else(|| Error("The answer is incomplete.".into()))?;
    Ok(pg_sys::Datum::from(unsafe {
        pg_sys::JsonbValueToJsonb(root)
    }))
}

/// Why a value could not be written as jsonb.
#[derive(Debug)]
pub(crate) struct Error(pub String);

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// `serde_json`'s name for the struct a `RawValue` serializes as, and for its one field.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

use pg_sys::JsonbIteratorToken::{
    WJB_BEGIN_ARRAY, WJB_BEGIN_OBJECT, WJB_ELEM, WJB_END_ARRAY, WJB_END_OBJECT, WJB_KEY, WJB_VALUE,
};

/// The state of `pushJsonbValue` and, per open container, whether it is an array (its values
/// are elements) or an object (its values follow keys).
pub(crate) struct Builder {
    state: *mut pg_sys::JsonbParseState,
    stack: Vec<bool>,
    /// The finished value, once the outermost container (or scalar) is closed.
    root: Option<*mut pg_sys::JsonbValue>,
}

fn value(type_: pg_sys::jbvType::Type) -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is plain data; all-zero is a valid (null) value.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = type_;
    v
}

/// A jsonb string value: a copy of `s` in the current memory context, which lives until the
/// jsonb is built.
fn string(s: &str) -> Result<pg_sys::JsonbValue, Error> {
    if s.contains('\0') {
        // jsonb_in refuses \u0000 as well.
        return Err(Error(
            "A string of the answer contains a NUL character.".into(),
        ));
    }
    let len = i32::try_from(s.len()).map_err(|_| Error("A string is too long.".into()))?;
    let mut v = value(pg_sys::jbvType::jbvString);
    unsafe {
        let copy = pg_sys::palloc(s.len().max(1)).cast::<u8>();
        copy.copy_from_nonoverlapping(s.as_ptr(), s.len());
        v.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
            len,
            val: copy.cast(),
        };
    }
    Ok(v)
}

/// A numeric value read from its decimal text, as `jsonb_in` reads a JSON number.
fn numeric_from_text(text: &str) -> pg_sys::JsonbValue {
    let text = std::ffi::CString::new(text).expect("a number's text has no NUL");
    let datum = unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::numeric_in,
            &[
                Some(text.as_ptr().into()),
                Some(pg_sys::InvalidOid.into()),
                Some((-1i32).into()),
            ],
        )
    }
    .expect("numeric_in answers a value");
    let mut v = value(pg_sys::jbvType::jbvNumeric);
    v.val.numeric = datum.cast_mut_ptr();
    v
}

fn numeric_i64(n: i64) -> pg_sys::JsonbValue {
    let mut v = value(pg_sys::jbvType::jbvNumeric);
    v.val.numeric = unsafe { pg_sys::int64_to_numeric(n) };
    v
}

impl Builder {
    fn push(&mut self, token: pg_sys::JsonbIteratorToken::Type, v: *mut pg_sys::JsonbValue) {
        let result = unsafe { pg_sys::pushJsonbValue(&mut self.state, token, v) };
        if self.state.is_null() {
            self.root = Some(result);
        }
    }

    /// A value in the current container (or the whole value, a scalar alone).
    fn scalar(&mut self, mut v: pg_sys::JsonbValue) -> Result<(), Error> {
        match self.stack.last() {
            Some(true) => self.push(WJB_ELEM, &mut v),
            Some(false) => self.push(WJB_VALUE, &mut v),
            None => {
                // A scalar alone is stored as a one-element "raw scalar" array.
                let mut array = value(pg_sys::jbvType::jbvArray);
                array.val.array.rawScalar = true;
                array.val.array.nElems = 1;
                self.push(WJB_BEGIN_ARRAY, &mut array);
                self.push(WJB_ELEM, &mut v);
                self.push(WJB_END_ARRAY, std::ptr::null_mut());
            }
        }
        Ok(())
    }

    fn begin(&mut self, array: bool) {
        let token = if array {
            WJB_BEGIN_ARRAY
        } else {
            WJB_BEGIN_OBJECT
        };
        self.push(token, std::ptr::null_mut());
        self.stack.push(array);
    }

    fn close(&mut self) {
        let array = self.stack.pop().expect("a container is open");
        let token = if array { WJB_END_ARRAY } else { WJB_END_OBJECT };
        self.push(token, std::ptr::null_mut());
    }

    /// An enum variant with content, as serde_json writes it: an object of one key, the
    /// variant's name, whose value comes next.
    fn variant(&mut self, name: &str) -> Result<(), Error> {
        self.begin(false);
        self.key(name)
    }

    fn key(&mut self, key: &str) -> Result<(), Error> {
        let mut k = string(key)?;
        self.push(WJB_KEY, &mut k);
        Ok(())
    }

    /// Raw JSON text (a `RawValue`, valid JSON) as a value in the current container, walked
    /// with serde_json: each number is read by `numeric_in` from its own text, as `jsonb_in`
    /// reads it, so numbers stay exact.
    fn raw(&mut self, json: &str) -> Result<(), Error> {
        let text = json.trim_matches(|c: char| c.is_ascii_whitespace());
        match text.as_bytes().first() {
            Some(b'{') => {
                let Fields(fields) = serde_json::from_str(text)?;
                self.begin(false);
                for (key, v) in fields {
                    self.key(&key)?;
                    self.raw(v.get())?;
                }
                self.close();
                Ok(())
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                self.begin(true);
                for v in items {
                    self.raw(v.get())?;
                }
                self.close();
                Ok(())
            }
            Some(b'"') => {
                let s: String = serde_json::from_str(text)?;
                self.scalar(string(&s)?)
            }
            Some(b't' | b'f') => {
                let b: bool = serde_json::from_str(text)?;
                ser::Serializer::serialize_bool(self, b)
            }
            Some(b'n') => {
                let () = serde_json::from_str(text)?;
                ser::Serializer::serialize_unit(self)
            }
            _ => {
                // A JSON number (checked as one), exact.
                let _: serde::de::IgnoredAny = serde_json::from_str(text)?;
                self.scalar(numeric_from_text(text))
            }
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("Raw JSON is malformed: {e}"))
    }
}

/// An object's members in their order, each value as its raw JSON text.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(key) = map.next_key::<String>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(members))
            }
        }
        d.deserialize_map(Members)
    }
}

/// An integer as a numeric: through `int64_to_numeric` when it fits in 64 bits, else read from
/// its decimal text.
fn numeric_integer<T: TryInto<i64> + Display + Copy>(n: T) -> pg_sys::JsonbValue {
    match n.try_into() {
        Ok(small) => numeric_i64(small),
        Err(_) => numeric_from_text(&n.to_string()),
    }
}

/// The serializer's integer methods: each a numeric (see `numeric_integer`).
macro_rules! integers {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method(self, n: $ty) -> Result<(), Error> {
            self.scalar(numeric_integer(n))
        }
    )*};
}

impl<'a> ser::Serializer for &'a mut Builder {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Struct<'a>;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, b: bool) -> Result<(), Error> {
        let mut v = value(pg_sys::jbvType::jbvBool);
        v.val.boolean = b;
        self.scalar(v)
    }

    integers! {
        serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
        serialize_i128(i128), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_u128(u128),
    }

    fn serialize_f32(self, n: f32) -> Result<(), Error> {
        if !n.is_finite() {
            return self.serialize_unit();
        }
        // serde_json prints an f32 by its own shortest text.
        self.scalar(numeric_from_text(ryu::Buffer::new().format_finite(n)))
    }

    fn serialize_f64(self, n: f64) -> Result<(), Error> {
        if !n.is_finite() {
            return self.serialize_unit();
        }
        self.scalar(numeric_from_text(ryu::Buffer::new().format_finite(n)))
    }

    fn serialize_char(self, c: char) -> Result<(), Error> {
        self.serialize_str(c.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, s: &str) -> Result<(), Error> {
        let v = string(s)?;
        self.scalar(v)
    }

    fn serialize_bytes(self, bytes: &[u8]) -> Result<(), Error> {
        // As serde_json: an array of numbers.
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(bytes.len()))?;
        for b in bytes {
            seq.serialize_element(b)?;
        }
        seq.end()
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Error> {
        v.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.scalar(value(pg_sys::jbvType::jbvNull))
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(name)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        self.variant(name)?;
        v.serialize(&mut *self)?;
        self.close();
        Ok(())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Error> {
        self.begin(true);
        Ok(self)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Self, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.variant(name)?;
        self.begin(true);
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, Error> {
        self.begin(false);
        Ok(self)
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Struct<'a>, Error> {
        if name == RAW_VALUE_TOKEN {
            return Ok(Struct::Raw(self));
        }
        self.begin(false);
        Ok(Struct::Object(self))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.variant(name)?;
        self.begin(false);
        Ok(self)
    }
}

/// The serde traits of sequences: each value in turn, then the containers closed (an array, or
/// for a tuple variant the array and the object around it).
macro_rules! sequence {
    ($($trait:ident :: $method:ident closes $closes:literal;)*) => {$(
        impl ser::$trait for &mut Builder {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
                v.serialize(&mut **self)
            }

            fn end(self) -> Result<(), Error> {
                for _ in 0..$closes {
                    self.close();
                }
                Ok(())
            }
        }
    )*};
}

sequence! {
    SerializeSeq::serialize_element closes 1;
    SerializeTuple::serialize_element closes 1;
    SerializeTupleStruct::serialize_field closes 1;
    SerializeTupleVariant::serialize_field closes 2;
}

impl ser::SerializeMap for &mut Builder {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let key = key.serialize(KeyText)?;
        self.key(&key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        v.serialize(&mut **self)
    }

    fn end(self) -> Result<(), Error> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Builder {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        self.key(name)?;
        v.serialize(&mut **self)
    }

    fn end(self) -> Result<(), Error> {
        self.close(); // the fields
        self.close(); // the object around them
        Ok(())
    }
}

/// A struct being written: an object, or the raw JSON of a `RawValue`.
pub(crate) enum Struct<'a> {
    Object(&'a mut Builder),
    Raw(&'a mut Builder),
}

impl ser::SerializeStruct for Struct<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        match self {
            Struct::Object(b) => {
                b.key(name)?;
                v.serialize(&mut **b)
            }
            Struct::Raw(b) => {
                let json = v.serialize(KeyText)?;
                b.raw(&json)
            }
        }
    }

    fn end(self) -> Result<(), Error> {
        if let Struct::Object(b) = self {
            b.close();
        }
        Ok(())
    }
}

/// Keys written as their text (`Display`).
macro_rules! displayed_keys {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method(self, v: $ty) -> Result<String, Error> {
            Ok(v.to_string())
        }
    )*};
}

/// An object key's text, as serde_json writes keys: strings as they are, numbers, booleans and
/// characters as their text. (Also reads a `RawValue`'s JSON text, a string.)
struct KeyText;

fn not_a_key() -> Error {
    Error("An object key must be a string.".into())
}

impl ser::Serializer for KeyText {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = ser::Impossible<String, Error>;
    type SerializeTuple = ser::Impossible<String, Error>;
    type SerializeTupleStruct = ser::Impossible<String, Error>;
    type SerializeTupleVariant = ser::Impossible<String, Error>;
    type SerializeMap = ser::Impossible<String, Error>;
    type SerializeStruct = ser::Impossible<String, Error>;
    type SerializeStructVariant = ser::Impossible<String, Error>;

    displayed_keys! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_char(char),
    }
    fn serialize_f32(self, _: f32) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_f64(self, _: f64) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_str(self, s: &str) -> Result<String, Error> {
        Ok(s.to_string())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_none(self) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_unit(self) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
    ) -> Result<String, Error> {
        Ok(name.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<String, Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Error> {
        Err(not_a_key())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(not_a_key())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(not_a_key())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(not_a_key())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(not_a_key())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(not_a_key())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(not_a_key())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(not_a_key())
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::to_jsonb;
    use pgrx::prelude::*;
    use serde::ser::SerializeMap;
    use serde::Serialize;
    use serde_json::json;
    use serde_json::value::RawValue;

    fn text_of(datum: pg_sys::Datum) -> String {
        let out = unsafe {
            pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
        };
        out.expect("jsonb_out answers")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// The jsonb built directly is the one `jsonb_in` reads from serde_json's text of `v`.
    fn same<T: Serialize + ?Sized>(v: &T) -> String {
        let text = std::ffi::CString::new(serde_json::to_string(v).unwrap()).unwrap();
        let parsed = unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(text.as_ptr().into())])
        }
        .unwrap();
        let built = to_jsonb(v).unwrap();
        let equal = unsafe {
            pgrx::direct_function_call::<bool>(pg_sys::jsonb_eq, &[Some(parsed), Some(built)])
        };
        assert_eq!(equal, Some(true));
        assert_eq!(text_of(built), text_of(parsed));
        text_of(built)
    }

    #[derive(Serialize)]
    enum Variant {
        Unit,
        Newtype(i32),
        Tuple(i32, String),
        Struct { a: bool, b: Option<f64> },
    }

    #[derive(Serialize)]
    struct WithRaw {
        n: f64,
        raw: Box<RawValue>,
        nested: Vec<Box<RawValue>>,
    }

    /// Writes key "k" twice: later keys win, in jsonb_in as here.
    struct Twice;
    impl Serialize for Twice {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("k", &1)?;
            m.serialize_entry("k", &2)?;
            m.end()
        }
    }

    #[pg_test]
    fn answers_built_directly_are_what_jsonb_in_reads() {
        same(&json!({
            "b": [1, 2.5, -3, 1e300, 0.1, -0.0, 123456789.125, u64::MAX, i64::MIN, 1e-7],
            "a": null, "d": true, "f": {}, "g": [], "h": {"z": 1, "a": {"y": [[]]}},
            "e": "x\u{1}y\"\\ \u{e9} \u{1F600} \t\n</script>",
        }));
        for scalar in [
            json!(null),
            json!("OK"),
            json!(42),
            json!(1.5),
            json!(false),
        ] {
            same(&scalar);
        }
        assert_eq!(
            same(&(f64::NAN, f64::INFINITY, 2.5f32)),
            "[null, null, 2.5]"
        );
        assert_eq!(same(&u128::MAX), u128::MAX.to_string());
        assert_eq!(same(&i128::MIN), i128::MIN.to_string());
        same(&[Variant::Unit, Variant::Newtype(7)]);
        same(&Variant::Tuple(1, "t".into()));
        same(&Variant::Struct { a: true, b: None });
        assert_eq!(same(&Twice), r#"{"k": 2}"#);
        let exact =
            r#"{"n": 12345678901234567890123.000000000000000000001, "s": [1, {"t": null}]}"#;
        same(&WithRaw {
            n: 0.3,
            raw: RawValue::from_string(exact.into()).unwrap(),
            nested: vec![RawValue::from_string("7".into()).unwrap()],
        });
        assert!(same(&RawValue::from_string(exact.into()).unwrap())
            .contains("12345678901234567890123.000000000000000000001"));
        same(&RawValue::from_string("\"alone\"".into()).unwrap());
        let forms = r#" { "a\"b\u00e9\n": [-0, 1E+2, 0.10, -1.5e-3, 18446744073709551616, true, false, null,
                          "\ud83d\ude00 \t \u0001", {}, [], {"k": 1, "k": [2]}] } "#;
        same(&RawValue::from_string(forms.into()).unwrap());
        assert!(to_jsonb(&RawValue::from_string(r#"{"s": "\u0000"}"#.into()).unwrap()).is_err());
        same(&std::collections::BTreeMap::from([
            (3, "three"),
            (10, "ten"),
        ]));
    }

    #[pg_test]
    fn a_nul_character_is_refused_as_jsonb_in_refuses_it() {
        assert!(to_jsonb(&json!({"s": "a\u{0}b"})).is_err());
    }
}

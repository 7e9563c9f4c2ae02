//! What a handler's body is, for the AsyncAPI document ([`super::asyncapi`]): [`BodyDoc`] and
//! [`SchemaDoc`], and [`BodyOf`], with which `#[service]` describes a body type.

use std::{fmt, marker::PhantomData};

/// What a handler's body is, for the AsyncAPI document.
#[derive(Debug, Clone)]
pub struct BodyDoc {
    /// The Rust type, e.g. `Greeting`.
    pub type_name: &'static str,
    /// `application/json`, `text/plain` or `application/octet-stream`.
    pub content_type: &'static str,
    /// The JSON schema, when the type derives `utoipa::ToSchema`.
    pub schema: Option<SchemaDoc>,
}

/// A body type's schema, with the schemas it refers to.
#[derive(Clone)]
pub struct SchemaDoc {
    /// The schema's name (`ToSchema::name`).
    pub name: String,
    /// The schema.
    pub schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    /// The schemas it refers to, by name.
    pub references: Vec<(
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    )>,
}

impl fmt::Debug for SchemaDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaDoc")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Describes a body type for the AsyncAPI document. Call as
/// `(&&&BodyOf::<T>::new()).doc()`: raw types first, then types with a schema
/// (`utoipa::ToSchema`), then any other (JSON without a schema).
pub struct BodyOf<T>(PhantomData<T>);

impl<T> BodyOf<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

pub trait BodyOfRaw {
    fn doc(&self) -> BodyDoc;
}

impl BodyOfRaw for &&BodyOf<String> {
    fn doc(&self) -> BodyDoc {
        BodyDoc {
            type_name: "String",
            content_type: "text/plain",
            schema: None,
        }
    }
}

impl BodyOfRaw for &&BodyOf<Vec<u8>> {
    fn doc(&self) -> BodyDoc {
        BodyDoc {
            type_name: "Vec<u8>",
            content_type: "application/octet-stream",
            schema: None,
        }
    }
}

pub trait BodyOfSchema {
    fn doc(&self) -> BodyDoc;
}

impl<T: utoipa::ToSchema + 'static> BodyOfSchema for &BodyOf<T> {
    fn doc(&self) -> BodyDoc {
        let mut references = Vec::new();
        T::schemas(&mut references);
        BodyDoc {
            type_name: short_type_name::<T>(),
            content_type: "application/json",
            schema: Some(SchemaDoc {
                name: T::name().into_owned(),
                schema: T::schema(),
                references,
            }),
        }
    }
}

pub trait BodyOfJson {
    fn doc(&self) -> BodyDoc;
}

impl<T> BodyOfJson for BodyOf<T> {
    fn doc(&self) -> BodyDoc {
        BodyDoc {
            type_name: short_type_name::<T>(),
            content_type: "application/json",
            schema: None,
        }
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let without_generics = full.split('<').next().unwrap_or(full);
    without_generics
        .rsplit("::")
        .next()
        .unwrap_or(without_generics)
}

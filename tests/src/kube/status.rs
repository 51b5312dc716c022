//! Every error the test server answers is a `Status` object, as the real API server's are:
//! clients (kubectl, client-go, kube-rs, the Python client) read `reason` and `code` from it.
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    NotFound {
        resource: String,
        name: String,
    },
    AlreadyExists {
        resource: String,
        name: String,
    },
    Unauthorized,
    Forbidden(String),
    BadRequest(String),
    Invalid(String),
    MethodNotAllowed,
    /// The resourceVersion a watch asked for is older than the history kept.
    Expired(String),
    TooLarge,
    UnsupportedMediaType(String),
    /// A write whose resourceVersion is no longer the object's.
    Conflict(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } => 409,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::BadRequest(_) => 400,
            ApiError::Invalid(_) => 422,
            ApiError::MethodNotAllowed => 405,
            ApiError::Expired(_) => 410,
            ApiError::TooLarge => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Conflict(_) => 409,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Invalid(_) => "Invalid",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Expired(_) => "Expired",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Conflict(_) => "Conflict",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::NotFound { resource, name } => format!("{resource} \"{name}\" not found"),
            ApiError::AlreadyExists { resource, name } => {
                format!("{resource} \"{name}\" already exists")
            }
            ApiError::Unauthorized => "Unauthorized".into(),
            ApiError::MethodNotAllowed => {
                "the server does not allow this method on the requested resource".into()
            }
            ApiError::TooLarge => "the request is larger than 3 MiB".into(),
            ApiError::Forbidden(m)
            | ApiError::BadRequest(m)
            | ApiError::Invalid(m)
            | ApiError::Expired(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Conflict(m) => m.clone(),
        }
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let ApiError::NotFound { resource, name } | ApiError::AlreadyExists { resource, name } =
            self
        {
            status["details"] = json!({ "name": name, "kind": resource });
        }
        status
    }
}

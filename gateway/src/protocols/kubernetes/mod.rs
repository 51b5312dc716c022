//! The API-server path (`protocol: kubernetes` targets): what each request is, as the API
//! server itself would read it.
pub mod request_info;

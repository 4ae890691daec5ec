//! Errors: what the user got wrong, what is worth retrying, and what is not. AWS errors are
//! classified once, here, from the SDK's error metadata (the service's error code and the
//! error's kind), never from the text of a message.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use aws_credential_types::provider::error::CredentialsError;

use crate::model::InvalidInput;

/// What kind of failure an AWS error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Throttling and request limits: back off and try again.
    Throttled,
    /// A concurrent transaction on the same item: try again.
    Conflict,
    /// Timeouts, dispatch failures, 5xx: try again.
    Transient,
    /// The endpoint could not be reached at all (connection refused, no route, unknown host):
    /// try again later, and tell a person which endpoint.
    Unreachable,
    /// No usable credentials (none configured, an expired session, a provider that timed
    /// out): nothing was sent. Retryable, since providers recover; a person is told where to
    /// put credentials.
    NoCredentials,
    /// A write's condition was false.
    ConditionFailed,
    /// The request does not fit (e.g. an item without its key attributes).
    Validation,
    /// The table, queue or resource does not exist.
    NotFound,
    /// Credentials or permissions.
    AccessDenied,
    /// Anything else the service refused.
    Other,
}

impl ErrorKind {
    /// Worth trying again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled
                | ErrorKind::Conflict
                | ErrorKind::Transient
                | ErrorKind::Unreachable
                | ErrorKind::NoCredentials
        )
    }

    /// The kind of a service error code (DynamoDB's, SQS's, CloudFormation's).
    pub fn of_code(code: &str) -> Self {
        match code {
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "RequestLimitExceeded"
            | "LimitExceededException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException" => ErrorKind::Throttled,
            "TransactionConflictException" | "TransactionInProgressException" => ErrorKind::Conflict,
            "InternalServerError" | "InternalFailure" | "ServiceUnavailable" | "InternalError" => ErrorKind::Transient,
            "ConditionalCheckFailedException" => ErrorKind::ConditionFailed,
            "ValidationException" | "ValidationError" | "InvalidParameterValue" => ErrorKind::Validation,
            "ResourceNotFoundException" | "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue" => {
                ErrorKind::NotFound
            }
            "AccessDeniedException" | "AccessDenied" | "UnrecognizedClientException" => ErrorKind::AccessDenied,
            _ => ErrorKind::Other,
        }
    }

    /// The kind of one `CancellationReason` code of a cancelled transaction (`None` for the
    /// items that were fine).
    pub fn of_cancellation(code: &str) -> Option<Self> {
        match code {
            "None" | "" => None,
            "ConditionalCheckFailed" => Some(ErrorKind::ConditionFailed),
            "TransactionConflict" => Some(ErrorKind::Conflict),
            "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded" => Some(ErrorKind::Throttled),
            "ItemCollectionSizeLimitExceeded" | "ValidationError" => Some(ErrorKind::Validation),
            _ => Some(ErrorKind::Other),
        }
    }

    /// The kind that decides for a cancelled transaction: a failed condition first (retrying
    /// cannot help), then a validation error, else the retryable causes.
    pub fn of_cancellations<'a>(codes: impl IntoIterator<Item = &'a str>) -> Self {
        let kinds: Vec<ErrorKind> = codes.into_iter().filter_map(Self::of_cancellation).collect();
        [ErrorKind::ConditionFailed, ErrorKind::Validation, ErrorKind::Other, ErrorKind::Throttled, ErrorKind::Conflict]
            .into_iter()
            .find(|k| kinds.contains(k))
            .unwrap_or(ErrorKind::Other)
    }
}

/// An error of the control table, the queues or the user's tables, with what was being done.
/// Its message is whole (`detail` says the cause in a line), so it is the end of an error
/// chain: the SDK's error it came from is kept in `raw` for `{:?}`, not repeated.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {detail}")]
pub struct AwsError {
    pub kind: ErrorKind,
    /// The service's error code, e.g. `ResourceNotFoundException`.
    pub code: Option<String>,
    pub context: String,
    pub detail: String,
    pub raw: BoxError,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl AwsError {
    pub fn new(kind: ErrorKind, context: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self { kind, code: None, context: context.into(), raw: detail.clone().into(), detail }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The service's error code, e.g. `ResourceNotFoundException`.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

/// Classify an SDK error of any AWS service from its metadata: transport failures and
/// timeouts are transient, a service error is what its code says.
pub fn classify<E>(context: impl Into<String>, err: SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let context = context.into();
    let (kind, code, detail) = match &err {
        SdkError::DispatchFailure(d) if d.is_io() => (ErrorKind::Unreachable, None, unreachable(&err)),
        SdkError::DispatchFailure(_) if causes(&err).any(|e| e.is::<CredentialsError>()) => {
            (ErrorKind::NoCredentials, None, chain(&err))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (ErrorKind::Transient, None, chain(&err))
        }
        SdkError::ServiceError(e) => {
            let code = e.err().code().map(str::to_string);
            let kind = match (&code, e.raw().status().as_u16()) {
                (Some(c), _) if ErrorKind::of_code(c) != ErrorKind::Other => ErrorKind::of_code(c),
                (_, status) if status >= 500 => ErrorKind::Transient,
                _ => ErrorKind::Other,
            };
            let detail =
                format!("{}: {}", code.as_deref().unwrap_or("ServiceError"), e.err().message().unwrap_or_default());
            (kind, code, detail)
        }
        other => (ErrorKind::Other, None, chain(other)),
    };
    AwsError { kind, code, context, detail, raw: Box::new(err) }
}

/// An error and its sources, outermost first.
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// An error's messages down its chain, each once (the SDK's layers often repeat their
/// source's message in their own).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for message in causes(err).map(|e| e.to_string()) {
        if !parts.last().is_some_and(|last| last.contains(&message)) {
            parts.push(message);
        }
    }
    parts.join(": ")
}

/// A connection that failed, in a few words: the system's reason (e.g. "connection refused").
fn unreachable(err: &(dyn std::error::Error + 'static)) -> String {
    match causes(err).find_map(|e| e.downcast_ref::<std::io::Error>()) {
        // The system's reason (connection refused, host unreachable); other io errors (a
        // failed DNS lookup) say more in their own words.
        Some(io) if io.raw_os_error().is_some() => io.kind().to_string().to_lowercase(),
        Some(io) => io.to_string(),
        None => chain(err),
    }
}

/// Why a request (create, pause, resume, cancel, region) was refused. A refused request
/// changed nothing; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("Owner resource does not exist: the {role} table {table:?} was not found in {region}. Create it first, then create the job again")]
    TableNotFound { role: &'static str, table: String, region: String },
    #[error("a job named {0:?} already exists; choose another name (job names are never reused)")]
    JobExists(String),
    #[error("job {0:?} does not exist; `tablecopy list` shows the jobs of this deployment")]
    JobNotFound(String),
    /// The job's state does not allow the request; the message names the state.
    #[error("{0}")]
    NotAllowed(String),
    /// The request took effect in part (the job exists but did not start); the message says
    /// what happens next.
    #[error("{0}")]
    Incomplete(String),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl RequestError {
    /// Worth sending again later (throttling, a service hiccup); everything else never
    /// succeeds as it is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RequestError::Aws(e) if e.is_retryable())
    }

    /// The request was refused for what it asked (bad input, a missing table, a job in the
    /// wrong state): sending it again gives the same answer. Everything else is a failure
    /// of the service and must end applied or in a dead-letter queue.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, RequestError::Aws(_) | RequestError::Incomplete(_))
    }
}

/// Errors of the SQS-triggered handlers. Retryable ones leave the message on its queue
/// (reported as a batch item failure); permanent ones (the job is gone) are logged and the
/// message dropped, so they do not loop.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("job {0} not found")]
    JobNotFound(String),
    /// Another copy of the slice holds its segment: the message comes back later.
    #[error("{0}")]
    Busy(String),
}

impl HandlerError {
    /// AWS errors are retried and, if they persist, reach the DLQ (where its alarm sees
    /// them): a control-plane failure must never silently drop the message a job depends on.
    /// Failures of the user's tables never get here: copy-chunk turns them into job failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::Aws(_) | HandlerError::Busy(_) => true,
            HandlerError::JobNotFound(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_kinds() {
        assert_eq!(ErrorKind::of_code("ProvisionedThroughputExceededException"), ErrorKind::Throttled);
        assert_eq!(ErrorKind::of_code("TransactionConflictException"), ErrorKind::Conflict);
        assert_eq!(ErrorKind::of_code("ResourceNotFoundException"), ErrorKind::NotFound);
        assert_eq!(ErrorKind::of_code("ValidationException"), ErrorKind::Validation);
        assert_eq!(ErrorKind::of_code("ConditionalCheckFailedException"), ErrorKind::ConditionFailed);
        assert_eq!(ErrorKind::of_code("SomethingNew"), ErrorKind::Other);
        assert!(ErrorKind::Throttled.is_retryable() && ErrorKind::Conflict.is_retryable());
        assert!(!ErrorKind::Validation.is_retryable() && !ErrorKind::ConditionFailed.is_retryable());
    }

    #[test]
    fn a_refused_connection_is_said_in_a_few_words_and_retried() {
        use aws_sdk_dynamodb::error::ConnectorError;
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err: SdkError<aws_sdk_dynamodb::operation::scan::ScanError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        let e = classify("Scan t", err);
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "Scan t: connection refused");
        assert!(std::error::Error::source(&e).is_none(), "the message is whole: nothing repeats it");
    }

    #[test]
    fn missing_credentials_are_their_own_kind_and_retried() {
        use aws_sdk_dynamodb::error::ConnectorError;
        let missing = CredentialsError::not_loaded("no profile, no environment variables");
        let err: SdkError<aws_sdk_dynamodb::operation::scan::ScanError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(missing.into(), None));
        let e = classify("Scan t", err);
        assert_eq!(e.kind, ErrorKind::NoCredentials);
        assert!(e.is_retryable(), "a provider that failed once (an expired session) may recover");
    }

    #[test]
    fn a_cancelled_transaction_is_as_retryable_as_its_reasons() {
        let kind = |codes: &[&str]| ErrorKind::of_cancellations(codes.iter().copied());
        assert_eq!(kind(&["None", "ThrottlingError"]), ErrorKind::Throttled);
        assert_eq!(kind(&["ProvisionedThroughputExceeded"]), ErrorKind::Throttled);
        assert_eq!(kind(&["TransactionConflict", "None"]), ErrorKind::Conflict);
        assert_eq!(kind(&["ThrottlingError", "ConditionalCheckFailed"]), ErrorKind::ConditionFailed);
        assert_eq!(kind(&["ValidationError", "TransactionConflict"]), ErrorKind::Validation);
        assert_eq!(kind(&["None", "None"]), ErrorKind::Other);
    }
}

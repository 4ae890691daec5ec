//! Errors: what the user got wrong, what is worth retrying, and what is not.

use crate::model::InvalidInput;

/// Errors of the control table, queues and user tables.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// Throttling, timeouts, 5xx: try again later.
    #[error("{context}: {detail}")]
    Retryable { context: String, detail: String, source: BoxError },
    /// The request can never succeed as it is.
    #[error("{context}: {detail}")]
    Permanent { context: String, detail: String, source: BoxError },
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl AwsError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, AwsError::Retryable { .. })
    }

    /// The service's error code, e.g. `ResourceNotFoundException`.
    pub fn code(&self) -> Option<&str> {
        let (AwsError::Retryable { detail, .. } | AwsError::Permanent { detail, .. }) = self;
        RETRYABLE_CODES.iter().chain(PERMANENT_CODES).copied().find(|c| detail.contains(c))
    }
}

const RETRYABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
    "TransactionConflictException",
    "RequestThrottled",
];
const PERMANENT_CODES: &[&str] = &["ResourceNotFoundException", "ValidationException", "AccessDeniedException"];

/// Classify an SDK error of any AWS service: throttling, server and transport errors are
/// retryable, everything else is permanent.
pub fn classify<E, R>(context: impl Into<String>, err: aws_sdk_dynamodb::error::SdkError<E, R>) -> AwsError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::SdkError;
    let context = context.into();
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(e) => e.err().code().is_some_and(|c| RETRYABLE_CODES.contains(&c)),
        _ => false,
    };
    let detail = match &err {
        SdkError::ServiceError(e) => {
            format!("{}: {}", e.err().code().unwrap_or("ServiceError"), e.err().message().unwrap_or_default())
        }
        other => aws_sdk_dynamodb::error::DisplayErrorContext(other).to_string(),
    };
    let source: BoxError = Box::new(err);
    if retryable {
        AwsError::Retryable { context, detail, source }
    } else {
        AwsError::Permanent { context, detail, source }
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
    /// how to finish it.
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
}

impl HandlerError {
    /// AWS errors are retried and, if they persist, reach the DLQ (where its alarm sees
    /// them): a control-plane failure must never silently drop the message a job depends on.
    /// Failures of the user's tables never get here: copy-chunk turns them into job failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::Aws(_) => true,
            HandlerError::JobNotFound(_) => false,
        }
    }
}

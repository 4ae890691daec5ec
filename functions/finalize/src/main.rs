//! finalize: wiring only. The handler is `shared::handlers::finalize_batch`.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::handlers::{finalize_batch, AwsDeps};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    let deps = AwsDeps::from_env().await?;
    run(service_fn(|event: LambdaEvent<SqsEvent>| finalize_batch(&deps, event.payload))).await
}

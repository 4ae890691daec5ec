//! copy-chunk: wiring only. The handler is `shared::handlers::copy_chunk_batch`; a slice ends
//! before the invocation's deadline.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::handlers::{copy_chunk_batch, deadline_from_epoch_ms, AwsDeps};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    let deps = AwsDeps::from_env().await?;
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        copy_chunk_batch(&deps, event.payload, deadline_from_epoch_ms(event.context.deadline))
    }))
    .await
}

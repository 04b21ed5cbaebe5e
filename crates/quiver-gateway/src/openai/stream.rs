//! Streamed answers as server-sent events.

use std::convert::Infallible;

use axum::response::sse::Event;
use futures::Stream;
use quiver_node::engine::FinishReason;
use quiver_node::{InferenceStream, Node, StreamEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;

use super::limits::InFlight;
use super::tool_calls::{self, Splitter};
use super::{ApiError, Kind, quiver_info, usage};

/// Events between the task reading the network and the client's response body.
const EVENTS: usize = 32;

/// What a streamed answer needs besides the network's stream.
pub(super) struct Answer<C> {
    pub(super) node: Node,
    /// One chunk event from a delta and a finish reason.
    pub(super) chunk: C,
    pub(super) include_usage: bool,
    pub(super) kind: Kind,
    /// Present when the model may call tools: holds back what may be a call.
    pub(super) splitter: Option<Splitter>,
    /// The request asked for log probabilities: they come with the finishing chunk.
    pub(super) logprobs: bool,
    /// The request stays in flight until its stream ends.
    pub(super) place: Option<InFlight>,
}

impl<C: Fn(Value, Value, Value) -> Event + Send + 'static> Answer<C> {
    /// The SSE events of a streamed answer: a role delta (chat), content deltas (tool call
    /// deltas), the finish reason, usage if asked, and `[DONE]`. An error mid-stream ends with an
    /// error event.
    pub(super) fn events(
        mut self,
        mut stream: InferenceStream,
        first: StreamEvent,
    ) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        let (tx, rx) = mpsc::channel::<Event>(EVENTS);
        tokio::spawn(async move {
            let _place = self.place.take();
            let role = json!({ "role": "assistant", "content": "" });
            if self.kind == Kind::Chat && tx.send((self.chunk)(role, Value::Null, Value::Null)).await.is_err() {
                return;
            }
            let mut next = Some(Ok(first));
            while let Some(event) = next.take() {
                match event {
                    Ok(StreamEvent::Token(t)) => {
                        let content = match &mut self.splitter {
                            Some(s) => s.push(&t),
                            None => t,
                        };
                        if !content.is_empty()
                            && tx
                                .send((self.chunk)(json!({ "content": content }), Value::Null, Value::Null))
                                .await
                                .is_err()
                        {
                            debug!("the client went away; cancelling the job");
                            return; // dropping `stream` cancels the job
                        }
                    }
                    Ok(StreamEvent::Done(r)) => {
                        self.node.record_gateway_usage(r.usage);
                        let mut finish = json!(r.finish_reason);
                        if let Some(splitter) = self.splitter.take() {
                            let (content, calls) = splitter.finish();
                            let mut deltas = Vec::new();
                            if !content.is_empty() {
                                deltas.push(json!({ "content": content }));
                            }
                            if !calls.is_empty() {
                                deltas.extend(tool_calls::call_deltas(&calls));
                                finish = json!(FinishReason::ToolCalls);
                            }
                            for delta in deltas {
                                if tx.send((self.chunk)(delta, Value::Null, Value::Null)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        let logprobs =
                            if self.logprobs { super::logprobs_json(self.kind, &r.logprobs) } else { Value::Null };
                        let _ = tx.send((self.chunk)(json!({}), finish, logprobs)).await;
                        if self.include_usage {
                            let object =
                                if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                            let v = json!({ "object": object, "choices": [], "usage": usage(r.usage),
                                            "quiver": quiver_info(&r) });
                            let _ = tx.send(Event::default().data(v.to_string())).await;
                        }
                        let _ = tx.send(Event::default().data("[DONE]")).await;
                        return;
                    }
                    Err(e) => {
                        let err = ApiError::from(e);
                        let _ = tx.send(Event::default().data(err.body().to_string())).await;
                        return;
                    }
                }
                next = tokio::select! {
                    ev = stream.next() => ev,
                    // Also notice a client that left while no token is coming (a queued job).
                    () = tx.closed() => {
                        debug!("the client went away; cancelling the job");
                        return;
                    }
                };
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
    }
}

//! Turns the actions of a transition into history entries and outbox messages (commands for
//! participants, lifecycle events for the notification worker). Timers and finishing need
//! no message: the saga row carries them.

use chrono::{DateTime, Utc};
use platform::contract::{
    Command, CommandPayload, Direction, Dispatch, Event, Producer, StepOutput, Topics,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::SagaContext;
use super::store::{NewHistory, NewOutboxMessage};
use crate::saga::{Action, SagaState, StepKind};

/// The history entry of an input that moved (or did not move) a saga to `state`.
pub(super) fn history(
    saga_id: Uuid,
    kind: &str,
    step: Option<i32>,
    attempt: Option<i32>,
    state: &SagaState,
    detail: Value,
    now: DateTime<Utc>,
) -> NewHistory {
    NewHistory {
        saga_id,
        kind: kind.to_owned(),
        step,
        attempt,
        status: state.status.as_str().to_owned(),
        detail,
        recorded_at: now,
    }
}

pub(super) fn for_action(
    topics: &Topics,
    context: &SagaContext<'_>,
    action: &Action,
    now: DateTime<Utc>,
) -> Option<(NewHistory, Option<NewOutboxMessage>)> {
    match action {
        Action::Dispatch {
            step,
            attempt,
            command,
            role,
        } => Some(command_message(
            topics,
            context,
            (*step, *attempt),
            Direction::Forward,
            command,
            role,
            now,
        )),
        // Same message, same command id as the first send.
        Action::Resend {
            step,
            attempt,
            command,
            role,
        } => Some(command_message(
            topics,
            context,
            (*step, *attempt),
            Direction::Forward,
            command,
            role,
            now,
        )),
        Action::Compensate {
            step,
            attempt,
            command,
            role,
        } => Some(command_message(
            topics,
            context,
            (*step, *attempt),
            Direction::Compensate,
            command,
            role,
            now,
        )),
        Action::Fence {
            step,
            attempt,
            command,
            role,
        } => Some(command_message(
            topics,
            context,
            (*step, *attempt),
            Direction::Fence,
            command,
            role,
            now,
        )),
        Action::Emit(event) => {
            let step = event.step.and_then(|s| u32::try_from(s).ok());
            let message = Event {
                id: Uuid::now_v7(),
                saga_id: context.id,
                saga: context.definition.name.clone(),
                kind: event.kind.as_str().to_owned(),
                step,
                message: event.message.clone(),
                occurred_at: now,
            };
            let entry = NewHistory {
                saga_id: context.id,
                kind: event.kind.as_str().to_owned(),
                step: step.and_then(|s| i32::try_from(s).ok()),
                attempt: None,
                status: context.state.status.as_str().to_owned(),
                detail: json!({ "message": event.message, "event_id": message.id }),
                recorded_at: now,
            };
            Some((entry, Some(outbox(topics.events(), context, &message, now))))
        }
        Action::ScheduleTimer { .. } | Action::Finish(_) => None,
    }
}

/// The history kind that records the send of a command in `direction`.
pub(super) fn sent_kind(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "command.sent",
        Direction::Compensate => "compensation.sent",
        Direction::Fence => "fence.sent",
    }
}

pub(super) fn command_message(
    topics: &Topics,
    context: &SagaContext<'_>,
    (step, attempt): (usize, u32),
    direction: Direction,
    name: &str,
    role: &str,
    now: DateTime<Utc>,
) -> (NewHistory, Option<NewOutboxMessage>) {
    let step_number = u32::try_from(step).unwrap_or(u32::MAX);
    let dispatch = Dispatch {
        step: step_number,
        attempt,
        direction,
    };
    let command = Command::new(
        context.id,
        &context.definition.name,
        dispatch,
        name,
        command_payload(context),
        now,
    );
    let entry = NewHistory {
        saga_id: context.id,
        kind: sent_kind(direction).to_owned(),
        step: i32::try_from(step).ok(),
        attempt: i32::try_from(attempt).ok(),
        status: context.state.status.as_str().to_owned(),
        detail: json!({ "command": name, "command_id": command.id, "role": role }),
        recorded_at: now,
    };
    let message = outbox(topics.commands(role), context, &command, now);
    (entry, Some(message))
}

/// What a participant gets: the saga's input and the outputs of the steps that succeeded,
/// by step name, each with what produced it (a compensation needs, e.g., the reservation
/// its step made; a payout needs the claim's reply, and never a signal's body).
fn command_payload(context: &SagaContext<'_>) -> CommandPayload {
    let outputs = context
        .definition
        .steps
        .iter()
        .zip(&context.state.steps)
        .filter_map(|(step, state)| {
            let by = match &step.kind {
                StepKind::Task(task) => Producer::Command {
                    role: task.role.clone(),
                    command: task.command.clone(),
                },
                StepKind::Signal(_) => Producer::Signal {
                    name: step.name.clone(),
                },
                StepKind::Wait(_) => Producer::Wait,
            };
            let output = state.output.clone()?;
            Some((step.name.clone(), StepOutput { by, output }))
        })
        .collect();
    CommandPayload {
        input: context.payload.clone(),
        outputs,
    }
}

fn outbox<T: serde::Serialize>(
    topic: String,
    context: &SagaContext<'_>,
    message: &T,
    now: DateTime<Utc>,
) -> NewOutboxMessage {
    NewOutboxMessage {
        topic,
        message_key: context.id.to_string(),
        payload: serde_json::to_value(message).unwrap_or(Value::Null),
        created_at: now,
        traceparent: context.traceparent.map(str::to_owned),
    }
}

//! The wire contract between the orchestrator and the workers.
//!
//! Topic names, commands, replies and lifecycle events live here and only here: both sides
//! import these types, so a change to the contract is a compile error on both sides rather
//! than a silent mismatch at run time. Every message is JSON, keyed by saga id so that all
//! messages of one saga land on one partition and keep their order.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The command names of the contract: what the definitions send and the participants
/// match on, so a renamed command is a compile error on both sides.
pub mod commands {
    pub const INVENTORY_RESERVE: &str = "inventory.reserve";
    pub const INVENTORY_RELEASE: &str = "inventory.release";
    pub const PAYMENT_CHARGE: &str = "payment.charge";
    pub const PAYMENT_REFUND: &str = "payment.refund";
    pub const SHIPMENT_PREPARE: &str = "shipment.prepare";
    pub const SHIPMENT_CANCEL: &str = "shipment.cancel";
    pub const COUPON_CLAIM: &str = "coupon.claim";
    pub const COUPON_UNCLAIM: &str = "coupon.unclaim";
    pub const VENDOR_PAYOUT: &str = "vendor.payout";

    /// Every command name.
    pub const ALL: [&str; 9] = [
        INVENTORY_RESERVE,
        INVENTORY_RELEASE,
        PAYMENT_CHARGE,
        PAYMENT_REFUND,
        SHIPMENT_PREPARE,
        SHIPMENT_CANCEL,
        COUPON_CLAIM,
        COUPON_UNCLAIM,
        VENDOR_PAYOUT,
    ];
}

/// A worker role: one Kafka consumer group and one command topic per participant role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Inventory,
    Payment,
    Shipment,
    Coupon,
    Vendor,
    /// Consumes lifecycle events rather than commands.
    Notification,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Inventory,
        Role::Payment,
        Role::Shipment,
        Role::Coupon,
        Role::Vendor,
        Role::Notification,
    ];

    /// Roles that receive commands (everything but notification).
    pub const PARTICIPANTS: [Role; 5] = [
        Role::Inventory,
        Role::Payment,
        Role::Shipment,
        Role::Coupon,
        Role::Vendor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inventory => "inventory",
            Role::Payment => "payment",
            Role::Shipment => "shipment",
            Role::Coupon => "coupon",
            Role::Vendor => "vendor",
            Role::Notification => "notification",
        }
    }
}

impl AsRef<str> for Role {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == value)
            .ok_or_else(|| {
                let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role `{value}` (known: {})", known.join(", "))
            })
    }
}

/// Topic names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Kafka topic names allow `[a-zA-Z0-9._-]`, at most 249 characters; keep room for suffixes.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let valid_chars = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if prefix.is_empty() || prefix.len() > 200 || !valid_chars {
            return Err("must be 1-200 characters of [a-zA-Z0-9._-]".to_owned());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Commands for one participant role: a built-in [`Role`] or one a registered
    /// definition names.
    pub fn commands(&self, role: impl AsRef<str>) -> String {
        format!("{}.commands.{}", self.prefix, role.as_ref())
    }

    /// The role whose command topic `topic` is, if it is one.
    pub fn command_role<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.prefix)?
            .strip_prefix(".commands.")
            .filter(|role| !role.is_empty())
    }

    /// Replies from every participant to the orchestrator.
    pub fn replies(&self) -> String {
        format!("{}.replies", self.prefix)
    }

    /// Lifecycle events for the notification worker.
    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Messages that could not be decoded, with the reason in a header.
    pub fn dead_letter(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// Every topic the system uses; created at start-up.
    pub fn all(&self) -> Vec<String> {
        let mut topics: Vec<String> = Role::PARTICIPANTS
            .into_iter()
            .map(|role| self.commands(role))
            .collect();
        topics.extend([self.replies(), self.events(), self.dead_letter()]);
        topics
    }
}

/// Whether a command moves a saga forward, undoes a step, or fences it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Compensate,
    /// Make the forward command of `step` unable to take effect from now on (a tombstone),
    /// and report whether it already did: the reply's output is a [`Fenced`]. The saga sends
    /// it before compensating past a step whose outcome it does not know. Compensations
    /// fence as well.
    Fence,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Compensate => "compensate",
            Direction::Fence => "fence",
        }
    }
}

/// The `Succeeded` output of a fence reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fenced {
    /// The forward command took effect before the fence (it cannot be undone by a fence).
    pub applied: bool,
    /// The forward command's output, when it was applied.
    pub output: Option<serde_json::Value>,
}

/// The id of the command `(saga, direction, step, attempt)`: derived rather than random, so
/// every send of one attempt (a re-send after a timeout, a relay retry) carries the same id
/// and the participant's inbox applies it once.
pub fn command_id(saga_id: Uuid, direction: Direction, step: u32, attempt: u32) -> Uuid {
    let name = format!("{}:{step}:{attempt}", direction.as_str());
    Uuid::new_v5(&saga_id, name.as_bytes())
}

/// A command from the orchestrator to a participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique per attempt ([`command_id`]); re-sends of one attempt share it, and the
    /// participant's inbox dedups on it.
    pub id: Uuid,
    pub saga_id: Uuid,
    /// Saga definition name (`order`, `coupon_use`).
    pub saga: String,
    /// Index of the step in its definition.
    pub step: u32,
    /// Attempt number of this dispatch (forward and compensation counted separately).
    pub attempt: u32,
    pub direction: Direction,
    /// `inventory.reserve`, `payment.refund`, ...
    pub name: String,
    /// The saga's input plus the outputs of earlier steps, as the participant needs them.
    pub payload: CommandPayload,
    pub issued_at: DateTime<Utc>,
}

/// Which dispatch of which step a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    /// Index of the step in its definition.
    pub step: u32,
    /// Attempt number (forward and compensation counted separately).
    pub attempt: u32,
    pub direction: Direction,
}

impl Command {
    /// The command for `dispatch` of saga `saga_id` (of definition `saga`). Its id is
    /// [`command_id`] of the two, so every send of one attempt carries the same id.
    pub fn new(
        saga_id: Uuid,
        saga: &str,
        dispatch: Dispatch,
        name: &str,
        payload: CommandPayload,
        issued_at: DateTime<Utc>,
    ) -> Self {
        let Dispatch {
            step,
            attempt,
            direction,
        } = dispatch;
        Self {
            id: command_id(saga_id, direction, step, attempt),
            saga_id,
            saga: saga.to_owned(),
            step,
            attempt,
            direction,
            name: name.to_owned(),
            payload,
            issued_at,
        }
    }
}

/// What a command carries: the saga's input, and the outputs of the steps that succeeded
/// so far by step name, each with what produced it (a compensation needs, e.g., the
/// reservation its step made).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandPayload {
    #[serde(default)]
    pub input: serde_json::Value,
    #[serde(default)]
    pub outputs: std::collections::BTreeMap<String, StepOutput>,
}

/// One step's output and what produced it. A step name says nothing about who filled it:
/// a signal may carry any name a flow gives it, so a participant finds an output by the
/// command that must have produced it ([`CommandPayload::output_from`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    pub by: Producer,
    pub output: serde_json::Value,
}

/// What produced a step's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Producer {
    /// A participant's reply to this command, sent to this role.
    Command { role: String, command: String },
    /// The body of a signal a caller sent (`POST /v1/sagas/{id}/signals/{name}`).
    Signal { name: String },
    /// A durable wait that ended.
    Wait,
}

impl CommandPayload {
    /// The output of the one step whose forward command `command` was answered by `role`.
    /// An output of the same step name from a signal, or from another role, is not it; two
    /// steps that both ran `command` leave it ambiguous, which is refused too.
    pub fn output_from(&self, role: &str, command: &str) -> Result<&serde_json::Value, String> {
        let mut found = self.outputs.values().filter(|entry| {
            matches!(&entry.by, Producer::Command { role: r, command: c } if r == role && c == command)
        });
        match (found.next(), found.next()) {
            (Some(entry), None) => Ok(&entry.output),
            (None, _) => Err(format!(
                "no output of `{command}` answered by role `{role}`"
            )),
            (Some(_), Some(_)) => Err(format!(
                "several steps ran `{command}`: which output to use is ambiguous"
            )),
        }
    }
}

/// How a participant answered a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The change is applied (or there was nothing to undo, for a compensation).
    Succeeded { output: serde_json::Value },
    /// A business reason forbids the change (out of stock, insufficient funds...); nothing
    /// was changed and retrying will not help.
    Rejected { reason: String },
    /// Nothing was changed and a later attempt may succeed.
    Failed { reason: String },
}

impl Outcome {
    /// `succeeded`, `rejected` or `failed`: the `status` tag on the wire.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// A participant's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Unique per reply; the orchestrator's inbox dedups on it. A re-sent stored reply keeps
    /// its id, so a duplicate is recognised.
    pub id: Uuid,
    pub command_id: Uuid,
    pub saga_id: Uuid,
    pub step: u32,
    pub attempt: u32,
    pub direction: Direction,
    pub outcome: Outcome,
    /// The command's `issued_at`, copied back: the engine measures step latency with it.
    pub command_issued_at: DateTime<Utc>,
    pub replied_at: DateTime<Utc>,
}

impl Reply {
    /// The participant's answer to `command`, stamped now.
    pub fn answering(command: &Command, outcome: Outcome) -> Self {
        Self {
            id: Uuid::now_v7(),
            command_id: command.id,
            saga_id: command.saga_id,
            step: command.step,
            attempt: command.attempt,
            direction: command.direction,
            outcome,
            command_issued_at: command.issued_at,
            replied_at: Utc::now(),
        }
    }
}

/// A saga lifecycle event (`saga.started`, `step.succeeded`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    pub saga_id: Uuid,
    pub saga: String,
    /// Dotted kind, e.g. `compensation.started`.
    pub kind: String,
    pub step: Option<u32>,
    pub message: String,
    pub occurred_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("billing".parse::<Role>().unwrap_err().contains("billing"));
    }

    #[test]
    fn topic_names_carry_the_prefix() {
        let topics = Topics::new("t1").unwrap();
        assert_eq!(topics.commands(Role::Payment), "t1.commands.payment");
        assert_eq!(topics.replies(), "t1.replies");
        assert_eq!(topics.all().len(), 8);
        assert!(Topics::new("bad prefix").is_err());
        assert!(Topics::new("").is_err());
    }

    #[test]
    fn command_ids_are_stable_per_attempt_and_distinct_across_attempts() {
        let saga = Uuid::now_v7();
        let id = command_id(saga, Direction::Forward, 1, 1);
        assert_eq!(id, command_id(saga, Direction::Forward, 1, 1));
        assert_ne!(id, command_id(saga, Direction::Forward, 1, 2));
        assert_ne!(id, command_id(saga, Direction::Fence, 1, 1));
        assert_ne!(id, command_id(saga, Direction::Forward, 2, 1));
        assert_ne!(id, command_id(Uuid::now_v7(), Direction::Forward, 1, 1));
    }

    #[test]
    fn an_output_is_found_by_the_command_that_produced_it_never_by_its_step_name() {
        let claimed = |by: Producer, cents: i64| StepOutput {
            by,
            output: serde_json::json!({ "payout_cents": cents }),
        };
        let claim = || Producer::Command {
            role: "coupon".into(),
            command: "coupon.claim".into(),
        };
        let mut payload = CommandPayload::default();
        // A signal named like the claim step, and another role's command of the same name.
        payload.outputs.insert(
            "claim_coupon".into(),
            claimed(
                Producer::Signal {
                    name: "claim_coupon".into(),
                },
                1_000_000_000,
            ),
        );
        payload.outputs.insert(
            "forged".into(),
            claimed(
                Producer::Command {
                    role: "loyalty".into(),
                    command: "coupon.claim".into(),
                },
                900_000_000,
            ),
        );
        assert!(payload.output_from("coupon", "coupon.claim").is_err());
        payload
            .outputs
            .insert("claim".into(), claimed(claim(), 500));
        assert_eq!(
            payload.output_from("coupon", "coupon.claim").unwrap()["payout_cents"],
            500
        );
        payload
            .outputs
            .insert("claim_again".into(), claimed(claim(), 500));
        let ambiguous = payload.output_from("coupon", "coupon.claim").unwrap_err();
        assert!(ambiguous.contains("ambiguous"), "{ambiguous}");
        let wire = serde_json::to_value(&payload).unwrap();
        assert_eq!(wire["outputs"]["claim"]["by"]["kind"], "command");
        assert_eq!(wire["outputs"]["claim_coupon"]["by"]["kind"], "signal");
        assert_eq!(
            serde_json::from_value::<CommandPayload>(wire).unwrap(),
            payload
        );
    }

    #[test]
    fn reply_outcome_is_tagged_json() {
        let outcome = Outcome::Rejected {
            reason: "out of stock".into(),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["status"], "rejected");
        assert_eq!(serde_json::from_value::<Outcome>(json).unwrap(), outcome);
    }
}

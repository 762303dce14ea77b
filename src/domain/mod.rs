//! The pure domain: money, orders, payment records and the state machine.
//!
//! Nothing here does IO, reads a clock or knows about actors; the engine feeds it commands and
//! the current time, and carries out the effects it returns.

pub mod command;
pub mod ids;
pub mod machine;
pub mod money;
pub mod order;
pub mod payment;
pub mod rejection;

pub use command::{Command, CommandEnvelope, Effect, Effects, OrderEvent, TimerKind};
pub use ids::{CommandId, OrderId, Timestamp};
pub use machine::{apply, armed_timers, due_timers, next_due, Applied, OrderPolicy};
pub use money::{Currency, Money, MoneyError};
pub use order::{
    LineItem, LineItemRequest, NewOrder, NewOrderRequest, Order, OrderHeader, OrderStatus, Quantity,
};
pub use payment::{
    AttemptStatus, PaymentAttempt, PaymentMethod, PaymentResult, Refund, RefundResult, RefundStatus,
};
pub use rejection::{Rejection, ValidationError};

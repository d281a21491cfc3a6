//! Span and field names used in `tracing` across Statehouse, kept in one place so dashboards and
//! log queries can rely on them.

pub const SERVICE: &str = "statehouse.service";
pub const ENTITY_ID: &str = "statehouse.entity.id";
pub const ENTITY_SEQ: &str = "statehouse.entity.seq";
pub const COMMAND_ID: &str = "statehouse.command.id";
pub const KAFKA_TOPIC: &str = "kafka.topic";
pub const KAFKA_PARTITION: &str = "kafka.partition";
pub const KAFKA_TRANSACTIONAL_ID: &str = "kafka.transactional_id";
pub const ROLE: &str = "statehouse.role";

//! The engine interface: begin a transaction, run statements with positional `?` parameters,
//! read rows of plain values, commit. Dropping an uncommitted transaction rolls it back.
use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already holds this value.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A limit on rows was reached: how many are held.
    #[error("limit reached: {0} held")]
    OverLimit(u64),
    /// A schema object (table, column, index) of that name is already there: on MySQL, a
    /// migration's statement that a cut-off earlier run had applied.
    #[error("already in the schema: {0}")]
    InSchema(String),
    /// Anything else: a bug or a corrupt row.
    #[error("store error: {0}")]
    Internal(String),
}

/// A value bound to a `?` or read from a column.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v as i64)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row; columns are read by position, in the order of the SELECT.
#[derive(Debug)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn column(&self, i: usize) -> Result<&Value, StoreError> {
        self.0.get(i).ok_or_else(|| StoreError::Internal(format!("row has no column {i}")))
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.column(i)? {
            Value::Int(v) => Ok(*v),
            Value::Text(t) => t.parse().map_err(|_| StoreError::Internal(format!("column {i} is not an integer"))),
            Value::Null => Err(StoreError::Internal(format!("column {i} is NULL"))),
        }
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.column(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.column(i)? {
            Value::Text(t) => Ok(t.clone()),
            Value::Int(v) => Ok(v.to_string()),
            Value::Null => Err(StoreError::Internal(format!("column {i} is NULL"))),
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }
}

/// What a statement changed.
#[derive(Debug, Clone, Copy)]
pub struct Executed {
    pub affected: u64,
    pub last_insert_id: i64,
}

#[async_trait]
pub trait Tx: Send {
    async fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<Executed, StoreError>;
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>, StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Which SQL dialect a backend speaks (only the schema differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Mysql,
}

#[async_trait]
pub trait Backend: Send + Sync {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    fn dialect(&self) -> Dialect;
    /// A description without secrets, for logs: `sqlite ./data/bcs-api.db`, `mysql db@host:port`.
    fn describe(&self) -> String;
}

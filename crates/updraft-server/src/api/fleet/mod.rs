//! The fleet handlers of the management API, one module per resource.

mod assignments;
mod devices;
mod profiles;
mod tenants;

pub use self::assignments::*;
pub use self::devices::*;
pub use self::profiles::*;
pub use self::tenants::*;

mod attach;
mod blocking;
mod common;
mod errors;
mod golden;
mod options;
mod reliability;
mod wakers;

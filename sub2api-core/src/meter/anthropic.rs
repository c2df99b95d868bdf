//! (being written)
use crate::domain::Usage;
use super::UsageScanner;
#[derive(Default)] pub struct AnthropicSseScanner;
impl AnthropicSseScanner { pub fn new() -> Self { Self } }
impl UsageScanner for AnthropicSseScanner {
    fn feed(&mut self, _chunk: &[u8]) { todo!() }
    fn is_final(&self) -> bool { todo!() }
    fn usage(&mut self) -> Usage { todo!() }
    fn saw_error(&self) -> bool { todo!() }
    fn model(&self) -> Option<&str> { todo!() }
}
#[derive(Default)] pub struct AnthropicJsonScanner;
impl AnthropicJsonScanner { pub fn new() -> Self { Self } }
impl UsageScanner for AnthropicJsonScanner {
    fn feed(&mut self, _chunk: &[u8]) { todo!() }
    fn is_final(&self) -> bool { todo!() }
    fn usage(&mut self) -> Usage { todo!() }
    fn saw_error(&self) -> bool { todo!() }
    fn model(&self) -> Option<&str> { todo!() }
}

//! A tiny arithmetic language for derived tags, e.g. pseudo-resistance `(voltage - 1.65) / current`.
//!
//! Source is parsed once into a tree ([`Expr`]), whose variables the caller resolves to sample
//! slots; [`Expr::compile`] then flattens it into a postfix program ([`Compiled`]) that evaluates
//! on a fixed-size stack array, so evaluation never allocates.
//!
//! Values are `f64`; booleans are 1.0/0.0 and any non-zero value is true. NaN propagates through
//! every operator (comparisons and logic included) so a bad input can never turn into a
//! plausible-looking 0 or 1; division by zero gives ±inf/NaN per IEEE. The caller treats any
//! non-finite result as bad quality.

use thiserror::Error;

/// Longest accepted source, in characters.
pub const MAX_SOURCE_CHARS: usize = 1024;
/// Deepest accepted nesting of parentheses, calls and unary operators; bounds parser recursion.
pub const MAX_DEPTH: usize = 32;
/// Evaluation stack size; programs needing more are rejected by [`Expr::compile`].
pub const MAX_STACK: usize = 16;

const KNOWN_FUNCTIONS: &str = "abs, min, max, sqrt, clamp, if";

/// A parse or compile error. Offsets (`at`) count characters from the start of the source.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExprError {
    #[error("empty expression")]
    Empty,
    #[error("expression is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("unexpected character '{ch}' at {at}")]
    UnexpectedChar { ch: char, at: usize },
    #[error("malformed number '{text}' at {at}")]
    BadNumber { text: String, at: usize },
    #[error("unexpected '{found}' at {at}, expected {expected}")]
    UnexpectedToken {
        found: String,
        at: usize,
        expected: &'static str,
    },
    #[error("unexpected end of expression at {at}, expected {expected}")]
    UnexpectedEnd { at: usize, expected: &'static str },
    #[error("unknown function '{name}' at {at}; known: {KNOWN_FUNCTIONS}")]
    UnknownFunction { name: String, at: usize },
    #[error("function '{name}' at {at} takes {expected}, got {found}")]
    WrongArity {
        name: &'static str,
        at: usize,
        expected: &'static str,
        found: usize,
    },
    #[error("comparisons cannot be chained at {at}; combine them with 'and'")]
    ChainedComparison { at: usize },
    #[error("expression nested deeper than {max} levels at {at}")]
    TooDeep { at: usize, max: usize },
    #[error("expression needs {needed} evaluation slots; the limit is {max}")]
    TooComplex { needed: usize, max: usize },
    #[error("unknown variable '{name}' at {at}")]
    UnknownVariable { name: String, at: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnaryOp {
    Neg,
    Not,
    Abs,
    Sqrt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TernaryOp {
    Clamp,
    If,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Num(f64),
    /// Index into `Expr::variables`.
    Var(usize),
    Unary(UnaryOp, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    Ternary(TernaryOp, Box<[Node; 3]>),
}

fn truth(x: f64) -> f64 {
    f64::from(u8::from(x != 0.0))
}

fn apply_unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Not if x.is_nan() => x,
        UnaryOp::Not => f64::from(u8::from(x == 0.0)),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sqrt => x.sqrt(),
    }
}

#[inline(always)]
fn apply_binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        // Arithmetic ops already propagate NaN; the rest must do it explicitly.
        _ if a.is_nan() || b.is_nan() => f64::NAN,
        BinaryOp::Lt => f64::from(u8::from(a < b)),
        BinaryOp::Le => f64::from(u8::from(a <= b)),
        BinaryOp::Gt => f64::from(u8::from(a > b)),
        BinaryOp::Ge => f64::from(u8::from(a >= b)),
        BinaryOp::Eq => f64::from(u8::from(a == b)),
        BinaryOp::Ne => f64::from(u8::from(a != b)),
        BinaryOp::And => truth(a) * truth(b),
        BinaryOp::Or => truth(truth(a) + truth(b)),
        BinaryOp::Min => a.min(b),
        BinaryOp::Max => a.max(b),
    }
}

fn apply_ternary(op: TernaryOp, a: f64, b: f64, c: f64) -> f64 {
    match op {
        // `f64::clamp` panics on inverted bounds; here they are just a bad value.
        TernaryOp::Clamp if a.is_nan() || b.is_nan() || c.is_nan() || b > c => f64::NAN,
        TernaryOp::Clamp => a.max(b).min(c),
        // Both branches are always evaluated (they are pure); only the chosen one is returned,
        // so `if(current > 0, v / current, 0)` is fine.
        TernaryOp::If if a.is_nan() => f64::NAN,
        TernaryOp::If if a != 0.0 => b,
        TernaryOp::If => c,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(f64),
    Ident,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Cmp(BinaryOp),
    And,
    Or,
    Not,
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    tok: Tok,
    at: usize,
    len: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn lex(chars: &[char]) -> Result<Vec<Token>, ExprError> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let next = chars.get(i + 1).copied();
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            c if c.is_ascii_digit() || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) => {
                i = scan_number(chars, i);
                let text: String = chars[start..i].iter().collect();
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => Tok::Num(v),
                    _ => return Err(ExprError::BadNumber { text, at: start }),
                }
            }
            c if is_ident_start(c) => {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match word.as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    _ => Tok::Ident,
                }
            }
            _ => {
                let (tok, len) = match (c, next) {
                    ('<', Some('=')) => (Tok::Cmp(BinaryOp::Le), 2),
                    ('>', Some('=')) => (Tok::Cmp(BinaryOp::Ge), 2),
                    ('=', Some('=')) => (Tok::Cmp(BinaryOp::Eq), 2),
                    ('!', Some('=')) => (Tok::Cmp(BinaryOp::Ne), 2),
                    ('<', _) => (Tok::Cmp(BinaryOp::Lt), 1),
                    ('>', _) => (Tok::Cmp(BinaryOp::Gt), 1),
                    ('(', _) => (Tok::LParen, 1),
                    (')', _) => (Tok::RParen, 1),
                    (',', _) => (Tok::Comma, 1),
                    ('+', _) => (Tok::Plus, 1),
                    ('-', _) => (Tok::Minus, 1),
                    ('*', _) => (Tok::Star, 1),
                    ('/', _) => (Tok::Slash, 1),
                    _ => return Err(ExprError::UnexpectedChar { ch: c, at: start }),
                };
                i += len;
                tok
            }
        };
        tokens.push(Token {
            tok,
            at: start,
            len: i - start,
        });
    }
    tokens.push(Token {
        tok: Tok::End,
        at: chars.len(),
        len: 0,
    });
    Ok(tokens)
}

/// Returns the end of the number starting at `i`. Anything glued to it that could be read as
/// part of a number or name (`1.2.3`, `2e`, `3x`) is swallowed so the whole run is reported.
fn scan_number(chars: &[char], mut i: usize) -> usize {
    let digits = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    if chars.get(i) == Some(&'.') {
        i += 1;
        digits(&mut i);
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let sign = usize::from(matches!(chars.get(i + 1), Some('+' | '-')));
        if chars.get(i + 1 + sign).is_some_and(char::is_ascii_digit) {
            i += 1 + sign;
            digits(&mut i);
        }
    }
    while i < chars.len() && (is_ident_char(chars[i]) || chars[i] == '.') {
        i += 1;
    }
    i
}

struct Parser<'a> {
    chars: &'a [char],
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    variables: Vec<String>,
    first_use: Vec<usize>,
}

impl Parser<'_> {
    fn peek(&self) -> Token {
        // The token list always ends with `End`, and `advance` never moves past it.
        self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let t = self.peek();
        if t.tok != Tok::End {
            self.pos += 1;
        }
        t
    }

    fn text(&self, t: Token) -> String {
        self.chars[t.at..t.at + t.len].iter().collect()
    }

    fn unexpected(&self, t: Token, expected: &'static str) -> ExprError {
        if t.tok == Tok::End {
            ExprError::UnexpectedEnd { at: t.at, expected }
        } else {
            ExprError::UnexpectedToken {
                found: self.text(t),
                at: t.at,
                expected,
            }
        }
    }

    fn expect(&mut self, tok: Tok, expected: &'static str) -> Result<Token, ExprError> {
        let t = self.peek();
        if t.tok == tok {
            Ok(self.advance())
        } else {
            Err(self.unexpected(t, expected))
        }
    }

    fn descend(&mut self, at: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::TooDeep { at, max: MAX_DEPTH });
        }
        Ok(())
    }

    fn ascend(&mut self) {
        self.depth -= 1;
    }

    fn parse_or(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_and()?;
        while self.peek().tok == Tok::Or {
            self.advance();
            let right = self.parse_and()?;
            left = binary(BinaryOp::Or, left, right);
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_not()?;
        while self.peek().tok == Tok::And {
            self.advance();
            let right = self.parse_not()?;
            left = binary(BinaryOp::And, left, right);
        }
        Ok(left)
    }

    /// `not` binds looser than comparisons: `not a < b` is `not (a < b)`.
    fn parse_not(&mut self) -> Result<Node, ExprError> {
        let t = self.peek();
        if t.tok != Tok::Not {
            return self.parse_comparison();
        }
        self.advance();
        self.descend(t.at)?;
        let operand = self.parse_not()?;
        self.ascend();
        Ok(unary(UnaryOp::Not, operand))
    }

    fn parse_comparison(&mut self) -> Result<Node, ExprError> {
        let left = self.parse_additive()?;
        let Tok::Cmp(op) = self.peek().tok else {
            return Ok(left);
        };
        self.advance();
        let right = self.parse_additive()?;
        let t = self.peek();
        if matches!(t.tok, Tok::Cmp(_)) {
            return Err(ExprError::ChainedComparison { at: t.at });
        }
        Ok(binary(op, left, right))
    }

    fn parse_additive(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_term()?;
        loop {
            let op = match self.peek().tok {
                Tok::Plus => BinaryOp::Add,
                Tok::Minus => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.parse_term()?;
            left = binary(op, left, right);
        }
    }

    fn parse_term(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Star => BinaryOp::Mul,
                Tok::Slash => BinaryOp::Div,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.parse_unary()?;
            left = binary(op, left, right);
        }
    }

    fn parse_unary(&mut self) -> Result<Node, ExprError> {
        let t = self.peek();
        if t.tok != Tok::Minus {
            return self.parse_primary();
        }
        self.advance();
        self.descend(t.at)?;
        let operand = self.parse_unary()?;
        self.ascend();
        Ok(unary(UnaryOp::Neg, operand))
    }

    fn parse_primary(&mut self) -> Result<Node, ExprError> {
        let t = self.advance();
        match t.tok {
            Tok::Num(v) => Ok(Node::Num(v)),
            Tok::LParen => {
                self.descend(t.at)?;
                let inner = self.parse_or()?;
                self.ascend();
                self.expect(Tok::RParen, "')'")?;
                Ok(inner)
            }
            Tok::Ident if self.peek().tok == Tok::LParen => self.parse_call(t),
            Tok::Ident => Ok(Node::Var(self.variable(t))),
            _ => Err(self.unexpected(t, "a number, a name or '('")),
        }
    }

    fn variable(&mut self, t: Token) -> usize {
        let name = self.text(t);
        if let Some(i) = self.variables.iter().position(|v| *v == name) {
            return i;
        }
        self.variables.push(name);
        self.first_use.push(t.at);
        self.variables.len() - 1
    }

    fn parse_call(&mut self, name_token: Token) -> Result<Node, ExprError> {
        let name = self.text(name_token);
        let at = name_token.at;
        let function = match name.as_str() {
            "abs" | "sqrt" | "min" | "max" | "clamp" | "if" => name,
            _ => return Err(ExprError::UnknownFunction { name, at }),
        };
        self.advance(); // '('
        self.descend(at)?;
        let mut args = Vec::new();
        if self.peek().tok != Tok::RParen {
            loop {
                args.push(self.parse_or()?);
                let t = self.peek();
                match t.tok {
                    Tok::Comma => {
                        self.advance();
                    }
                    Tok::RParen => break,
                    _ => return Err(self.unexpected(t, "',' or ')'")),
                }
            }
        }
        self.ascend();
        self.expect(Tok::RParen, "')'")?;
        let found = args.len();
        let arity = |name: &'static str, expected: &'static str| {
            Err(ExprError::WrongArity {
                name,
                at,
                expected,
                found,
            })
        };
        match function.as_str() {
            "abs" | "sqrt" => {
                let op = if function == "abs" {
                    UnaryOp::Abs
                } else {
                    UnaryOp::Sqrt
                };
                match <[Node; 1]>::try_from(args) {
                    Ok([x]) => Ok(unary(op, x)),
                    Err(_) => arity(
                        if op == UnaryOp::Abs { "abs" } else { "sqrt" },
                        "1 argument",
                    ),
                }
            }
            "min" | "max" => {
                let (op, name) = if function == "min" {
                    (BinaryOp::Min, "min")
                } else {
                    (BinaryOp::Max, "max")
                };
                let mut args = args.into_iter();
                match (args.next(), found) {
                    // Folded left so the evaluation stack holds at most one pending operand.
                    (Some(first), 2..) => Ok(args.fold(first, |acc, n| binary(op, acc, n))),
                    _ => arity(name, "at least 2 arguments"),
                }
            }
            _ => {
                let (op, name) = if function == "clamp" {
                    (TernaryOp::Clamp, "clamp")
                } else {
                    (TernaryOp::If, "if")
                };
                match <[Node; 3]>::try_from(args) {
                    Ok([a, b, c]) => Ok(ternary(op, a, b, c)),
                    Err(_) => arity(name, "3 arguments"),
                }
            }
        }
    }
}

// Constructors fold constant operands, with the same functions the evaluator uses.

fn unary(op: UnaryOp, x: Node) -> Node {
    match x {
        Node::Num(v) => Node::Num(apply_unary(op, v)),
        x => Node::Unary(op, Box::new(x)),
    }
}

fn binary(op: BinaryOp, a: Node, b: Node) -> Node {
    match (a, b) {
        (Node::Num(x), Node::Num(y)) => Node::Num(apply_binary(op, x, y)),
        (a, b) => Node::Binary(op, Box::new(a), Box::new(b)),
    }
}

fn ternary(op: TernaryOp, a: Node, b: Node, c: Node) -> Node {
    match (a, b, c) {
        (Node::Num(x), Node::Num(y), Node::Num(z)) => Node::Num(apply_ternary(op, x, y, z)),
        (a, b, c) => Node::Ternary(op, Box::new([a, b, c])),
    }
}

/// A parsed expression whose variables are still names.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
    variables: Vec<String>,
    /// Character offset of each variable's first use, for error messages.
    first_use: Vec<usize>,
}

impl Expr {
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        let len = src.chars().count();
        if len > MAX_SOURCE_CHARS {
            return Err(ExprError::TooLong {
                len,
                max: MAX_SOURCE_CHARS,
            });
        }
        let chars: Vec<char> = src.chars().collect();
        let tokens = lex(&chars)?;
        if tokens.len() == 1 {
            return Err(ExprError::Empty);
        }
        let mut parser = Parser {
            chars: &chars,
            tokens,
            pos: 0,
            depth: 0,
            variables: Vec::new(),
            first_use: Vec::new(),
        };
        let root = parser.parse_or()?;
        let t = parser.peek();
        if t.tok != Tok::End {
            return Err(parser.unexpected(t, "an operator or the end"));
        }
        Ok(Expr {
            root,
            variables: parser.variables,
            first_use: parser.first_use,
        })
    }

    /// Distinct variable names, in order of first appearance.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Binds every variable to a slot index (as returned by `resolve`) and flattens the tree.
    pub fn compile(&self, resolve: impl Fn(&str) -> Option<usize>) -> Result<Compiled, ExprError> {
        let mut slots = Vec::with_capacity(self.variables.len());
        for (name, &at) in self.variables.iter().zip(&self.first_use) {
            match resolve(name) {
                Some(slot) => slots.push(slot),
                None => {
                    return Err(ExprError::UnknownVariable {
                        name: name.clone(),
                        at,
                    })
                }
            }
        }
        let mut ops = Vec::new();
        emit(&self.root, &slots, &mut ops);
        let needed = stack_needed(&ops);
        if needed > MAX_STACK {
            return Err(ExprError::TooComplex {
                needed,
                max: MAX_STACK,
            });
        }
        Ok(Compiled { ops })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Const(f64),
    Load(usize),
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// Binary op whose right operand is a constant or a slot: the common `x - 1.65`, `v / i`
    /// shapes then cost one dispatch instead of two.
    BinaryConst(BinaryOp, f64),
    BinaryLoad(BinaryOp, usize),
    Ternary(TernaryOp),
}

fn emit(node: &Node, slots: &[usize], ops: &mut Vec<Op>) {
    match node {
        Node::Num(v) => ops.push(Op::Const(*v)),
        Node::Var(i) => ops.push(Op::Load(slot_of(slots, *i))),
        Node::Unary(op, x) => {
            emit(x, slots, ops);
            ops.push(Op::Unary(*op));
        }
        Node::Binary(op, a, b) => {
            emit(a, slots, ops);
            match **b {
                Node::Num(v) => ops.push(Op::BinaryConst(*op, v)),
                Node::Var(i) => ops.push(Op::BinaryLoad(*op, slot_of(slots, i))),
                _ => {
                    emit(b, slots, ops);
                    ops.push(Op::Binary(*op));
                }
            }
        }
        Node::Ternary(op, args) => {
            for a in args.iter() {
                emit(a, slots, ops);
            }
            ops.push(Op::Ternary(*op));
        }
    }
}

/// `slots` has one entry per variable by construction; an out-of-range slot would read NaN.
fn slot_of(slots: &[usize], variable: usize) -> usize {
    slots.get(variable).copied().unwrap_or(usize::MAX)
}

fn stack_needed(ops: &[Op]) -> usize {
    let mut depth = 0usize;
    let mut max = 0;
    for op in ops {
        match op {
            Op::Const(_) | Op::Load(_) => depth += 1,
            Op::Unary(_) | Op::BinaryConst(..) | Op::BinaryLoad(..) => {}
            Op::Binary(_) => depth = depth.saturating_sub(1),
            Op::Ternary(_) => depth = depth.saturating_sub(2),
        }
        max = max.max(depth);
    }
    max
}

/// A flattened, slot-bound expression, ready for repeated evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// Postfix program; well-formed by construction (each operator finds its operands).
    ops: Vec<Op>,
}

impl Compiled {
    /// Evaluates against the current slot values. A slot index beyond `slots` reads as NaN.
    pub fn eval(&self, slots: &[f64]) -> f64 {
        let mut stack = [0.0f64; MAX_STACK];
        let mut sp = 0usize;
        for op in &self.ops {
            match *op {
                Op::Const(v) => {
                    stack[sp] = v;
                    sp += 1;
                }
                Op::Load(i) => {
                    stack[sp] = slots.get(i).copied().unwrap_or(f64::NAN);
                    sp += 1;
                }
                Op::Unary(u) => stack[sp - 1] = apply_unary(u, stack[sp - 1]),
                Op::Binary(b) => {
                    sp -= 1;
                    stack[sp - 1] = apply_binary(b, stack[sp - 1], stack[sp]);
                }
                Op::BinaryConst(b, v) => stack[sp - 1] = apply_binary(b, stack[sp - 1], v),
                Op::BinaryLoad(b, i) => {
                    let v = slots.get(i).copied().unwrap_or(f64::NAN);
                    stack[sp - 1] = apply_binary(b, stack[sp - 1], v);
                }
                Op::Ternary(t) => {
                    sp -= 2;
                    stack[sp - 1] = apply_ternary(t, stack[sp - 1], stack[sp], stack[sp + 1]);
                }
            }
        }
        stack[0]
    }

    /// One more than the highest slot index read; `eval` needs a slice at least this long.
    pub fn slots_needed(&self) -> usize {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Load(i) | Op::BinaryLoad(_, i) => Some(i.saturating_add(1)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Evaluates `src` with variables bound, in order of first use, to `values`.
    fn eval_with(src: &str, values: &[f64]) -> f64 {
        let expr = Expr::parse(src).unwrap();
        let names = expr.variables().to_vec();
        let compiled = expr
            .compile(|name| names.iter().position(|n| n == name))
            .unwrap();
        compiled.eval(values)
    }

    fn eval(src: &str) -> f64 {
        eval_with(src, &[])
    }

    fn err(src: &str) -> String {
        Expr::parse(src).unwrap_err().to_string()
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(eval("1 + 2 * 3"), 7.0);
        assert_eq!(eval("(1 + 2) * 3"), 9.0);
        assert_eq!(eval("1 - 2 - 3"), -4.0);
        assert_eq!(eval("8 / 4 / 2"), 1.0);
        assert_eq!(eval("2 * 3 / 4"), 1.5);
        assert_eq!(eval("1 + 2 < 4"), 1.0);
        assert_eq!(eval("1 < 2 and 3 < 2 or 4 >= 4"), 1.0);
        assert_eq!(eval("1 or 0 and 0"), 1.0, "and binds tighter than or");
        assert_eq!(eval("not 1 < 2"), 0.0, "not applies to the comparison");
        assert_eq!(eval("not 0 and 0"), 0.0, "not binds tighter than and");
        assert_eq!(eval("2 == 2 and 2 != 3 and 2 <= 2 and 3 > 2"), 1.0);
    }

    #[test]
    fn unary_minus() {
        assert_eq!(eval("-2 * 3"), -6.0);
        assert_eq!(eval("- - 2"), 2.0);
        assert_eq!(eval("2 - -3"), 5.0);
        assert_eq!(eval("-(1 + 2)"), -3.0);
        assert_eq!(eval_with("-x * -x", &[3.0]), 9.0);
        assert_eq!(eval_with("1 - -x", &[3.0]), 4.0);
    }

    #[test]
    fn number_forms() {
        assert_eq!(eval("1e-3"), 0.001);
        assert_eq!(eval(".5"), 0.5);
        assert_eq!(eval("1."), 1.0);
        assert_eq!(eval("2E+2"), 200.0);
        assert_eq!(eval("1.5e1"), 15.0);
    }

    #[test]
    fn functions() {
        assert_eq!(eval("abs(-2.5)"), 2.5);
        assert_eq!(eval("min(3, 1, 2)"), 1.0);
        assert_eq!(eval("max(1, 5)"), 5.0);
        assert_eq!(eval("sqrt(16)"), 4.0);
        assert_eq!(eval("clamp(5, 0, 3)"), 3.0);
        assert_eq!(eval("clamp(-1, 0, 3)"), 0.0);
        assert_eq!(eval("clamp(2, 0, 3)"), 2.0);
        assert_eq!(eval_with("if(x > 0, 10, 20)", &[1.0]), 10.0);
        assert_eq!(eval_with("if(x > 0, 10, 20)", &[-1.0]), 20.0);
        // The untaken branch may be inf/NaN without harm.
        assert_eq!(eval_with("if(i > 0, v / i, 0)", &[0.0, 4.0]), 0.0);
        assert_eq!(eval_with("max(a, b, c, d)", &[1.0, 7.0, 3.0, 2.0]), 7.0);
    }

    #[test]
    fn nan_and_division_by_zero() {
        assert_eq!(eval_with("1 / x", &[0.0]), f64::INFINITY);
        assert!(eval("0 / 0").is_nan());
        assert!(eval("sqrt(-1)").is_nan());
        for src in [
            "x < 1",
            "x == x",
            "not x",
            "0 and x",
            "1 or x",
            "if(x, 1, 2)",
            "min(x, 1)",
            "max(1, x)",
            "clamp(x, 0, 1)",
            "clamp(0, x, 1)",
        ] {
            assert!(eval_with(src, &[f64::NAN]).is_nan(), "{src}");
        }
        assert!(eval("clamp(1, 3, 0)").is_nan(), "inverted bounds");
        assert!(
            eval_with("a + b", &[1.0]).is_nan(),
            "missing slot reads NaN"
        );
    }

    #[test]
    fn domain_expressions() {
        // Pseudo-resistance in μΩ with I in kA: (V − 1.65)/I · 1000 (docs/DOMAIN.md A2).
        let r = "(voltage - 1.65) / current * 1000";
        let expr = Expr::parse(r).unwrap();
        assert_eq!(expr.variables(), ["voltage", "current"]);
        for (v, i, want) in [
            (4.00, 500.0, 4.70),
            (4.10, 400.0, 6.125),
            (3.95, 600.0, 3.8333),
        ] {
            assert!((eval_with(r, &[v, i]) - want).abs() < 1e-3, "{v} V {i} kA");
        }
        // Power in kW from V and kA.
        assert!((eval_with("voltage * current", &[4.0, 500.0]) - 2000.0).abs() < 1e-9);
        // DC kWh/t = 2980 · V / CE (docs/DOMAIN.md B).
        let e = "2980 * voltage / ce";
        assert!((eval_with(e, &[3.95, 0.93]) - 12_656.99).abs() < 0.01);
        assert!((eval_with(e, &[4.10, 0.92]) - 13_280.43).abs() < 0.01);
    }

    #[test]
    fn variables_in_order_of_first_use() {
        let expr = Expr::parse("b + a * b + c / a").unwrap();
        assert_eq!(expr.variables(), ["b", "a", "c"]);
        // Function names are not variables, but a bare `if` or `min` is just a name.
        let expr = Expr::parse("min(x, if) + max").unwrap();
        assert_eq!(expr.variables(), ["x", "if", "max"]);
    }

    #[test]
    fn compile_maps_slots_and_reports_unknown_variables() {
        let expr = Expr::parse("(voltage - 1.65) / current").unwrap();
        let compiled = expr
            .compile(|name| match name {
                "current" => Some(0),
                "voltage" => Some(3),
                _ => None,
            })
            .unwrap();
        assert_eq!(compiled.slots_needed(), 4);
        assert!((compiled.eval(&[500.0, 9.0, 9.0, 4.0]) - 0.0047).abs() < 1e-12);

        let e = expr.compile(|name| (name == "voltage").then_some(0));
        assert_eq!(
            e.unwrap_err().to_string(),
            "unknown variable 'current' at 19"
        );
    }

    #[test]
    fn constant_folding_keeps_semantics() {
        assert_eq!(eval_with("2 * 3 + x", &[1.0]), 7.0);
        assert_eq!(
            Expr::parse("2 * 3 + x").unwrap().root,
            Expr::parse("6 + x").unwrap().root
        );
    }

    #[test]
    fn errors_carry_offsets() {
        assert_eq!(
            err("(voltage - 1.65)) / current"),
            "unexpected ')' at 16, expected an operator or the end"
        );
        assert_eq!(
            err("abs(x) + foo(1)"),
            "unknown function 'foo' at 9; known: abs, min, max, sqrt, clamp, if"
        );
        assert_eq!(
            err("1 +"),
            "unexpected end of expression at 3, expected a number, a name or '('"
        );
        assert_eq!(err("1 $ 2"), "unexpected character '$' at 2");
        // Non-breaking spaces are two bytes each in UTF-8; offsets count characters.
        assert_eq!(err("x\u{a0}+\u{a0}#"), "unexpected character '#' at 4");
        assert_eq!(err("x + 1.2.3"), "malformed number '1.2.3' at 4");
        assert_eq!(err("2e"), "malformed number '2e' at 0");
        assert_eq!(err("3kA"), "malformed number '3kA' at 0");
        assert_eq!(err("1e999"), "malformed number '1e999' at 0");
        assert_eq!(
            err("1 < 2 < 3"),
            "comparisons cannot be chained at 6; combine them with 'and'"
        );
        assert_eq!(
            err("clamp(x, 1)"),
            "function 'clamp' at 0 takes 3 arguments, got 2"
        );
        assert_eq!(err("abs()"), "function 'abs' at 0 takes 1 argument, got 0");
        assert_eq!(
            err("max(1)"),
            "function 'max' at 0 takes at least 2 arguments, got 1"
        );
        assert_eq!(
            err("(1 + 2"),
            "unexpected end of expression at 6, expected ')'"
        );
        assert_eq!(
            err("a b"),
            "unexpected 'b' at 2, expected an operator or the end"
        );
        assert_eq!(err("min(1 2)"), "unexpected '2' at 6, expected ',' or ')'");
        assert_eq!(
            err("x and"),
            "unexpected end of expression at 5, expected a number, a name or '('"
        );
        assert_eq!(err(""), "empty expression");
        assert_eq!(err("  \t"), "empty expression");
    }

    #[test]
    fn hostile_input_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(matches!(
            Expr::parse(&deep),
            Err(ExprError::TooDeep { at: 32, max: 32 })
        ));
        let negs = format!("{}1", "-".repeat(500));
        assert!(matches!(Expr::parse(&negs), Err(ExprError::TooDeep { .. })));
        let nots = format!("{}1", "not ".repeat(200));
        assert!(matches!(Expr::parse(&nots), Err(ExprError::TooDeep { .. })));
        let calls = format!("{}x{}", "abs(".repeat(100), ")".repeat(100));
        assert!(matches!(
            Expr::parse(&calls),
            Err(ExprError::TooDeep { .. })
        ));
        let long = "x + ".repeat(300) + "x";
        assert!(matches!(
            Expr::parse(&long),
            Err(ExprError::TooLong { len: 1201, .. })
        ));

        // Within the depth limit but needing more than MAX_STACK slots: rejected at compile.
        let wide = format!("{}x{}", "x + x * (".repeat(20), ")".repeat(20));
        let expr = Expr::parse(&wide).unwrap();
        assert!(matches!(
            expr.compile(|_| Some(0)),
            Err(ExprError::TooComplex { max: MAX_STACK, .. })
        ));
        // A long flat chain needs only two slots.
        let chain = "x + ".repeat(200) + "x";
        let compiled = Expr::parse(&chain).unwrap().compile(|_| Some(0)).unwrap();
        assert_eq!(compiled.eval(&[1.0]), 201.0);
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(src in "\\PC{0,80}") {
            let _ = Expr::parse(&src);
        }

        #[test]
        fn expression_like_strings_never_panic(
            src in "[a-c0-9 ().,+*/<>=!-]{0,60}|((abs|min|max|clamp|if|not|and|or|e|[(),.x0-9+*/<-])\\s?){0,40}"
        ) {
            if let Ok(expr) = Expr::parse(&src) {
                let n = expr.variables().len();
                if let Ok(compiled) = expr.compile(|name| {
                    expr.variables().iter().position(|v| v == name)
                }) {
                    let slots: Vec<f64> = (0..n).map(|i| i as f64 - 1.0).collect();
                    let _ = compiled.eval(&slots);
                    let _ = compiled.eval(&[]);
                }
            }
        }

        #[test]
        fn arithmetic_matches_rust(a in -1e6f64..1e6, b in -1e6f64..1e6, c in 0.5f64..1e3) {
            let got = eval_with("a - b * 2 + a / c - -b", &[a, b, c]);
            let want = a - b * 2.0 + a / c - -b;
            prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0));
        }
    }
}

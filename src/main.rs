fn main() {
    println!("alsentry");
}

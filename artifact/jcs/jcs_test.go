package jcs

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strconv"
	"testing"
)

// TestRFC8785Numbers is the table of RFC 8785 Appendix B: IEEE-754 bit
// patterns and their ECMAScript serialization.
func TestRFC8785Numbers(t *testing.T) {
	tests := []struct{ bits, want string }{
		{"0000000000000000", "0"},
		{"8000000000000000", "0"}, // minus zero
		{"0000000000000001", "5e-324"},
		{"8000000000000001", "-5e-324"},
		{"7fefffffffffffff", "1.7976931348623157e+308"},
		{"ffefffffffffffff", "-1.7976931348623157e+308"},
		{"4340000000000000", "9007199254740992"},
		{"c340000000000000", "-9007199254740992"},
		{"4430000000000000", "295147905179352830000"},
		{"44b52d02c7e14af5", "9.999999999999997e+22"},
		{"44b52d02c7e14af6", "1e+23"},
		{"44b52d02c7e14af7", "1.0000000000000001e+23"},
		{"444b1ae4d6e2ef4e", "999999999999999700000"},
		{"444b1ae4d6e2ef4f", "999999999999999900000"},
		{"444b1ae4d6e2ef50", "1e+21"},
		{"3eb0c6f7a0b5ed8c", "9.999999999999997e-7"},
		{"3eb0c6f7a0b5ed8d", "0.000001"},
		{"41b3de4355555553", "333333333.3333332"},
		{"41b3de4355555554", "333333333.33333325"},
		{"41b3de4355555555", "333333333.3333333"},
		{"41b3de4355555556", "333333333.3333334"},
		{"41b3de4355555557", "333333333.33333343"},
		{"becbf647612f3696", "-0.0000033333333333333333"},
		{"43143ff3c1cb0959", "1424953923781206.2"},
	}
	for _, tt := range tests {
		u, err := strconv.ParseUint(tt.bits, 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		f := math.Float64frombits(u)
		if got := string(AppendNumber(nil, f)); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.bits, got, tt.want)
		}
		// The serialization parses back to the same double and is canonical.
		got, err := Transform([]byte(tt.want))
		if err != nil || string(got) != tt.want {
			t.Errorf("%s: Transform(%s) = %s, %v", tt.bits, tt.want, got, err)
		}
	}
	for _, bits := range []uint64{0x7fffffffffffffff, 0x7ff0000000000000} { // NaN, Infinity
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%x: no panic for a non-finite number", bits)
				}
			}()
			AppendNumber(nil, math.Float64frombits(bits))
		}()
	}
}

// TestRFC8785Examples are the examples of RFC 8785 §3.2.2 (values) and
// §3.2.3 (member order).
func TestRFC8785Examples(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"3.2.2", `{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`, `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{"3.2.3", `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`, "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\"," +
			"\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{"nested and empty", ` { "b" : [ {}, [], "" ], "a" : { "z":1, "y" : -0.0 } } `, `{"a":{"y":0,"z":1},"b":[{},[],""]}`},
		{"controls", `"\u0000\u001f\u007f\u2028\b\t\n\f\r"`, `"\u0000\u001f` + "\u007f\u2028" + `\b\t\n\f\r"`},
		{"scalars", `[1.0, 100, 1e2, 0.1e1, -5E-1, 123456789012345678901234567890]`, `[1,100,100,1,-0.5,1.2345678901234568e+29]`},
	}
	for _, tt := range tests {
		got, err := Transform([]byte(tt.in))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if string(got) != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
}

func TestRefuses(t *testing.T) {
	tests := []struct {
		in   string
		want Reason
	}{
		{`{"a":1,"a":2}`, ReasonDuplicateKey},
		{`{"a":{"b":1,"b":1}}`, ReasonDuplicateKey},
		{`[{"x":1,"\u0078":2}]`, ReasonDuplicateKey}, // the same name, escaped
		{`1e309`, ReasonNumberRange},
		{`-1e400`, ReasonNumberRange},
		{`"\ud800"`, ReasonLoneSurrogate},
		{`"\udc00\ud800"`, ReasonLoneSurrogate},
		{`"\ud800\u0041"`, ReasonLoneSurrogate},
		{`"\ud800x"`, ReasonLoneSurrogate},
		{"\"\xed\xa0\x80\"", ReasonInvalidUTF8}, // a surrogate as UTF-8 bytes
		{"\"\xff\"", ReasonInvalidUTF8},
		{"", ReasonSyntax},
		{`{"a":1,}`, ReasonSyntax},
		{`[1,]`, ReasonSyntax},
		{`01`, ReasonSyntax},
		{`1.`, ReasonSyntax},
		{`.5`, ReasonSyntax},
		{`+1`, ReasonSyntax},
		{`NaN`, ReasonSyntax},
		{`Infinity`, ReasonSyntax},
		{`"a` + "\n" + `"`, ReasonSyntax},
		{`"\x"`, ReasonSyntax},
		{`{} {}`, ReasonSyntax},
		{`{'a':1}`, ReasonSyntax},
		{"\ufeff{}", ReasonSyntax}, // a byte-order mark
		{string(bytes.Repeat([]byte("["), MaxDepth+1)) + string(bytes.Repeat([]byte("]"), MaxDepth+1)), ReasonTooDeep},
	}
	for _, tt := range tests {
		got, err := Transform([]byte(tt.in))
		if r := ReasonOf(err); r != tt.want {
			t.Errorf("Transform(%q) = %q, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	deep := string(bytes.Repeat([]byte("["), MaxDepth)) + string(bytes.Repeat([]byte("]"), MaxDepth))
	if _, err := Transform([]byte(deep)); err != nil {
		t.Errorf("depth %d refused: %v", MaxDepth, err)
	}
}

// FuzzTransform checks that Transform never panics, that its output is
// canonical (a fixed point), means what the input meant (encoding/json
// reads the same value from both), and that whatever it refuses carries a
// reason code.
func FuzzTransform(f *testing.F) {
	for _, s := range []string{`{"b":[1,2.5e-7,"x"],"a":{"\u00e9":null,"e":true}}`, `"\ud83d\ude00"`, `-0`, `1e21`, `{"a":1,"a":2}`, `"\ud800"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Transform(in)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		again, err := Transform(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not a fixed point: %q → %q → %q, %v", in, out, again, err)
		}
		var a, b any
		if err := json.Unmarshal(in, &a); err != nil {
			t.Fatalf("encoding/json refuses what Transform accepted: %q: %v", in, err)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("encoding/json refuses the output %q: %v", out, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("value changed: %q → %q", in, out)
		}
	})
}

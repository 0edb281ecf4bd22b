package delivery

import "unicode/utf8"

// maxFastDepth bounds the nesting githubSubject follows; deeper documents go to encoding/json
// (whose own limit is far higher).
const maxFastDepth = 128

// githubSubject reads repository.full_name from a GitHub payload in one pass over its bytes,
// answering what json.Unmarshal into GitHub's document struct answers: the whole document must
// be valid JSON, the two keys match ASCII case-insensitively as encoding/json matches them, a
// later key overrides an earlier one, and null leaves a string as it was. ok is false for what
// it leaves to encoding/json — invalid JSON, a top level other than an object, a key of the top
// level or of the repository with an escape or a non-ASCII byte (encoding/json may fold it onto
// a field's name), a full_name with an escape or invalid UTF-8, a repository or full_name of
// another JSON type, nesting deeper than maxFastDepth — and the caller then decodes with
// encoding/json, which also words the error. Decoding the whole payload with encoding/json was
// most of the webhook function's own CPU per GitHub delivery.
func githubSubject(doc []byte) (subject string, ok bool) {
	s := scanner{b: doc}
	s.space()
	if !s.consume('{') {
		return "", false
	}
	hasRepo := false
	ok = s.object(1, func(key []byte, plain bool) bool {
		if !plain || !ascii(key) {
			return false
		}
		if !equalFoldASCII(key, "repository") {
			return s.value(1)
		}
		switch s.peek() {
		case 'n':
			hasRepo, subject = false, ""
			return s.literal("null")
		case '{':
			s.i++
			if !hasRepo {
				// encoding/json allocates the struct here; a repository decoded before (and
				// not nulled since) is decoded into again and keeps its full_name.
				hasRepo, subject = true, ""
			}
			return s.object(2, func(key []byte, plain bool) bool {
				if !plain || !ascii(key) {
					return false
				}
				if !equalFoldASCII(key, "full_name") {
					return s.value(2)
				}
				switch s.peek() {
				case 'n':
					return s.literal("null") // leaves the string as it was
				case '"':
					raw, plain, ok := s.str()
					if !ok || !plain || !utf8.Valid(raw) {
						return false
					}
					subject = string(raw)
					return true
				}
				return false
			})
		}
		return false
	})
	if !ok {
		return "", false
	}
	s.space()
	if s.i != len(s.b) {
		return "", false
	}
	return subject, true
}

// scanner walks a JSON document, accepting only what encoding/json's scanner accepts. Each
// method answers false at the first byte it does not accept (or does not handle).
type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// consume steps over c when it is next.
func (s *scanner) consume(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// object reads the members of an object at depth whose '{' was consumed, through its '}'. It
// calls member with each key's raw bytes (plain: without escapes), positioned at the value,
// which member must read.
func (s *scanner) object(depth int, member func(key []byte, plain bool) bool) bool {
	s.space()
	if s.consume('}') {
		return true
	}
	for {
		if s.peek() != '"' {
			return false
		}
		key, plain, ok := s.str()
		if !ok {
			return false
		}
		s.space()
		if !s.consume(':') {
			return false
		}
		s.space()
		if !member(key, plain) {
			return false
		}
		s.space()
		if s.consume('}') {
			return true
		}
		if !s.consume(',') {
			return false
		}
		s.space()
	}
}

// value reads any JSON value nested at depth.
func (s *scanner) value(depth int) bool {
	switch c := s.peek(); {
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == '{':
		if depth >= maxFastDepth {
			return false
		}
		s.i++
		return s.object(depth+1, func([]byte, bool) bool { return s.value(depth + 1) })
	case c == '[':
		if depth >= maxFastDepth {
			return false
		}
		s.i++
		s.space()
		if s.consume(']') {
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			s.space()
			if s.consume(']') {
				return true
			}
			if !s.consume(',') {
				return false
			}
			s.space()
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return false
}

// str reads the string starting at the '"' under s.i: its raw bytes between the quotes, and
// whether they hold no escape. JSON allows any byte from 0x20 up in a string (encoding/json
// replaces invalid UTF-8 only when decoding), and these escapes: \" \\ \/ \b \f \n \r \t \uXXXX.
func (s *scanner) str() (raw []byte, plain, ok bool) {
	start := s.i + 1
	plain = true
	for i := start; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			return s.b[start:i], plain, true
		case c == '\\':
			plain = false
			i++
			if i >= len(s.b) {
				return nil, false, false
			}
			switch s.b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(s.b) {
					return nil, false, false
				}
				for _, h := range s.b[i+1 : i+5] {
					if !isHex(h) {
						return nil, false, false
					}
				}
				i += 4
			default:
				return nil, false, false
			}
		case c < 0x20:
			return nil, false, false
		}
	}
	return nil, false, false
}

func (s *scanner) literal(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?; what follows it is for the
// caller to check (encoding/json refuses 01 or 1x as the caller then does).
func (s *scanner) number() bool {
	s.consume('-')
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.consume('.') && !s.digits() {
		return false
	}
	if s.consume('e') || s.consume('E') {
		if !s.consume('+') {
			s.consume('-')
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

// digits steps over [0-9]* and reports whether there was at least one.
func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func ascii(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// equalFoldASCII reports whether b equals the lower-case ASCII name ignoring ASCII case.
func equalFoldASCII(b []byte, name string) bool {
	if len(b) != len(name) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

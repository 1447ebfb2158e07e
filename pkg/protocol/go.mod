module github.com/fly-chat/chat/pkg/protocol

go 1.26.8

require golang.org/x/text v0.44.0

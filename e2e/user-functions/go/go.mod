// Pins the Go user functions of the e2e tests, from the official Cloudstate Go SDK,
// github.com/cloudstateio/go-support v0.3.0 (protocol 0.2). No Go code of ours: the SDK's main
// packages are built as tools of this module, by ../install.sh:
//   go build -mod=readonly -o <cache>/go-shoppingcart github.com/cloudstateio/go-support/tck/cmd/tck_shoppingcart
//   go build -mod=readonly -o <cache>/go-tck github.com/cloudstateio/go-support/tck/cmd/tck_eventsourced
// (tck_shoppingcart serves example/shoppingcart; tck_eventsourced serves the TCK models of every
// entity kind and the shopping cart. Both serve on $HOST:$PORT.)
module statehouse.dev/e2e/gouf

go 1.24

tool (
	github.com/cloudstateio/go-support/tck/cmd/tck_eventsourced
	github.com/cloudstateio/go-support/tck/cmd/tck_shoppingcart
)

require (
	github.com/cloudstateio/go-support v0.3.0 // indirect
	github.com/golang/protobuf v1.4.3 // indirect
	golang.org/x/net v0.0.0-20200324143707-d3edc9973b7e // indirect
	golang.org/x/sys v0.0.0-20200413165638-669c56c373c4 // indirect
	golang.org/x/text v0.3.2 // indirect
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013 // indirect
	google.golang.org/grpc v1.33.1 // indirect
	google.golang.org/protobuf v1.25.0 // indirect
)

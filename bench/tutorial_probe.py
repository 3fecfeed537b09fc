"""bench/tutorial.py with the harness's probe calls: the probe-instrumented twin of the tutorial.

Used by bench/auto_vs_probe.py to compare automatic phases (bench/tutorial.py unchanged) with
explicit probe calls on the same code, data and settings. The probe calls are the only change;
they mark what the automatic phases mark (data, forward, loss, backward, optimizer, epochs, the
test pass). Under a bare run every call is a no-op.

The tutorial's docstring follows.

torchvision.datasets.CIFAR10(...) becomes torchvision.datasets.ImageFolder(...) on the JPEG
mirror (unpacked by harness into data/cifar10-jpg). The network is the one our mission names
(conv 3->6 k5, pool, conv 6->16 k5, pool, linear 400->10). Used by bench/bare_vs_tutorial.py.

    python bench/tutorial.py [IMAGE_FOLDER]
"""

import sys

import torch
import torchvision
import torchvision.transforms as transforms

from harness import probe

root = sys.argv[1] if len(sys.argv) > 1 else "data/cifar10-jpg"

transform = transforms.Compose(
    [transforms.ToTensor(),
     transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

batch_size = 4

trainset = torchvision.datasets.ImageFolder(root=f"{root}/train", transform=transform)
trainloader = torch.utils.data.DataLoader(trainset, batch_size=batch_size,
                                          shuffle=True, num_workers=2)

testset = torchvision.datasets.ImageFolder(root=f"{root}/test", transform=transform)
testloader = torch.utils.data.DataLoader(testset, batch_size=batch_size,
                                         shuffle=False, num_workers=2)

classes = ('plane', 'car', 'bird', 'cat',
           'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.lin1 = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # flatten all dimensions except batch
        x = self.lin1(x)
        return x


net = Net()

import torch.optim as optim

criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

probe.watch(model=net, optimizer=optimizer)
for epoch in range(2):  # loop over the dataset multiple times
    with probe.epoch(epoch + 1):
        running_loss = 0.0
        for i, data in enumerate(probe.iterate(trainloader), 0):
            # get the inputs; data is a list of [inputs, labels]
            inputs, labels = data

            # zero the parameter gradients
            optimizer.zero_grad()

            # forward + backward + optimize
            probe.phase("forward")
            outputs = net(inputs)
            probe.phase("loss")
            loss = criterion(outputs, labels)
            probe.phase("backward")
            loss.backward()
            probe.phase("optimizer")
            optimizer.step()

            # print statistics
            running_loss += loss.item()
            if i % 2000 == 1999:    # print every 2000 mini-batches
                print(f'[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 2000:.3f}')
                running_loss = 0.0

print('Finished Training')

PATH = './cifar_net.pth'
torch.save(net.state_dict(), PATH)

net = Net()
net.load_state_dict(torch.load(PATH, weights_only=True))

correct = 0
total = 0
# since we're not training, we don't need to calculate the gradients for our outputs
with torch.no_grad(), probe.section("test"):
    for data in testloader:
        images, labels = data
        # calculate outputs by running images through the network
        outputs = net(images)
        # the class with the highest energy is chosen as the output
        _, predicted = torch.max(outputs, 1)
        total += labels.size(0)
        correct += (predicted == labels).sum().item()

print(f'Accuracy of the network on the 10000 test images: {100 * correct // total} %')
